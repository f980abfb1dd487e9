//! Base64url and JSON helpers shared by every token this crate builds.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

/// Encodes bytes as unpadded base64url, the JWS segment encoding (RFC 7515 §2).
pub(crate) fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes an unpadded base64url segment.
pub(crate) fn unb64(segment: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(segment).ok()
}

/// Serializes a JSON value compactly and encodes it as a JWS segment.
pub(crate) fn b64_json(value: &Value) -> String {
    b64(&serde_json::to_vec(value).expect("a serde_json::Value always serializes"))
}

/// The JWS signing input `b64(header).b64(payload)` with room for a signature.
pub(crate) fn signing_input(header_b64: &str, payload: &Value) -> String {
    let payload_b64 = b64_json(payload);
    // 344 bytes is the base64url length of an RSA-2048 signature; reserving it
    // avoids a reallocation when the signature is appended.
    let mut token = String::with_capacity(header_b64.len() + payload_b64.len() + 2 + 344);
    token.push_str(header_b64);
    token.push('.');
    token.push_str(&payload_b64);
    token
}
