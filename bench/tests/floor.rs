//! `writ-floor` is a yardstick: its figures mean something only if it does
//! the checks it claims to. These tests hold it to them: a good token is
//! exchanged once and recorded durably, and a replay, another repository,
//! another audience or a forged signature is refused without a record.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use writ_testkit::{FakeIssuer, GitHubClaims, IssuerShape};

struct Floor {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_floor(issuer: &str) -> Floor {
    let dir = tempfile::tempdir().expect("tempdir");
    let err_path = dir.path().join("floor.err");
    let err = std::fs::File::create(&err_path).expect("stderr file");
    let child = Command::new(env!("CARGO_BIN_EXE_writ-floor"))
        .args(["--listen", "127.0.0.1:0", "--issuer", issuer, "--audience", "https://floor.test"])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .expect("start writ-floor");
    // Wrapped at once, so that the process is killed and waited for even
    // if it never listens.
    let mut floor = Floor { child, addr: SocketAddr::from(([127, 0, 0, 1], 0)), dir };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&err_path).unwrap_or_default();
        if let Some(addr) = text.lines().find_map(|l| l.strip_prefix("writ-floor listening on ")) {
            floor.addr = addr.trim().parse().expect("address");
            return floor;
        }
        assert!(Instant::now() < deadline, "writ-floor did not listen: {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// POSTs one exchange on a fresh connection; returns the status and body.
fn post(addr: SocketAddr, token: &str) -> (u16, String) {
    let body = format!(r#"{{"token":"{token}","org":"bench"}}"#);
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "POST /v1/exchange HTTP/1.1\r\nhost: floor\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

fn records(floor: &Floor) -> usize {
    // One line per record, in a ring of zeros.
    std::fs::read(floor.dir.path().join("floor.log")).unwrap_or_default().iter().filter(|&&b| b == b'\n').count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_floor_exchanges_a_good_token_once_and_refuses_the_rest() {
    let issuer = FakeIssuer::start(IssuerShape::GitHub).await.expect("issuer");
    let url = issuer.url();
    let key = issuer.current_key();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() as i64;
    let claims = |repository: &str, audience: &str| {
        GitHubClaims::new(&url, audience, repository, now).ref_("refs/heads/main").environment("production").build()
    };
    let good = key.sign(&claims("acme/web", "https://floor.test"));
    let other_repository = key.sign(&claims("acme/other", "https://floor.test"));
    let other_audience = key.sign(&claims("acme/web", "https://elsewhere.test"));
    let forged = {
        let fresh = key.sign(&claims("acme/web", "https://floor.test"));
        let (signed, _) = fresh.rsplit_once('.').expect("three parts");
        let (_, signature) = good.rsplit_once('.').expect("three parts");
        format!("{signed}.{signature}")
    };

    let floor = tokio::task::spawn_blocking(move || start_floor(&url)).await.expect("start");
    let addr = floor.addr;
    let answers = tokio::task::spawn_blocking(move || {
        [&good, &good, &other_repository, &other_audience, &forged, &"not.a.token".to_owned()]
            .map(|token| post(addr, token))
    })
    .await
    .expect("requests");

    let (status, body) = &answers[0];
    assert_eq!(*status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(body).expect("json answer");
    let token = answer["access_token"].as_str().expect("access_token");
    assert_eq!(token.split('.').count(), 3, "{token}");
    let refusals = [
        ("replay", "already exchanged"),
        ("another repository", "fixed rule"),
        ("another audience", "aud"),
        ("a forged signature", "signature"),
        ("garbage", "base64url"),
    ];
    for ((what, says), (status, body)) in refusals.iter().zip(&answers[1..]) {
        assert_eq!(*status, 400, "{what} must be refused: {body}");
        assert!(body.contains(says), "{what}: the refusal should say why: {body}");
    }
    assert_eq!(records(&floor), 1, "one record, for the one exchange granted");
}
