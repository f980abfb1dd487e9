//! temporary timing probe
fn main() {
    let t = std::time::Instant::now();
    for i in 0..5 { let _ = writ_testkit::TestKey::generate(format!("k{i}")); }
    println!("keygen avg {:?}", t.elapsed() / 5);
    let key = writ_testkit::TestKey::generate("k");
    let claims = writ_testkit::GitHubClaims::new("http://127.0.0.1:1", "aud", "acme/web", 1_800_000_000);
    let t = std::time::Instant::now();
    for _ in 0..1000 { let c = claims.clone().jti(uuid_like()).build(); std::hint::black_box(key.sign(&c)); }
    println!("1000 build+mint {:?}", t.elapsed());
    let c = claims.build();
    let t = std::time::Instant::now();
    for _ in 0..1000 { std::hint::black_box(key.sign(&c)); }
    println!("1000 mint {:?}", t.elapsed());
}
fn uuid_like() -> String { "x".into() }
