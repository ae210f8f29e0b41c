//! Issue 15: a real browser. Headless Chromium (Debian's `chromium`) loads a page from another
//! loopback origin that imports the built SDK (`sdk/js/dist/esm`) and queries the gateway with
//! an end user's JWT: from an allowed origin the queries succeed (after one token refresh on
//! a 401); from a disallowed origin the SDK's error says CORS may be the cause.
//!
//! Needs Chromium and the built SDK, so `scripts/test` runs it after building the SDK:
//! `cargo test --test browser -- --ignored`.

mod common;
mod end_users;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use end_users::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serves the test page (with the gateway's URL and the tokens written in) and the SDK's
/// files, from its own origin.
async fn page_server(page: String, sdk: PathBuf) -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (page, sdk) = (page.clone(), sdk.clone());
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                let target = text.split_whitespace().nth(1).unwrap_or("/");
                let path = target.split('?').next().unwrap_or("/").to_owned();
                let (status, kind, body) = match path.strip_prefix("/sdk/") {
                    None if path == "/" => ("200 OK", "text/html", page.into_bytes()),
                    Some(file)
                        if !file.contains("..")
                            && file.ends_with(".js")
                            && sdk.join(file).is_file() =>
                    {
                        (
                            "200 OK",
                            "text/javascript",
                            std::fs::read(sdk.join(file)).unwrap(),
                        )
                    }
                    _ => ("404 Not Found", "text/plain", b"not found".to_vec()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&body).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (origin, task)
}

/// Loads `url` in headless Chromium and returns the text of `<pre id="out">` once the page's
/// script has written its outcome (virtual time waits for the page's network requests).
async fn run_in_chromium(url: &str) -> String {
    let profile = std::env::temp_dir().join(format!("sluice-chromium-{}", rand::random::<u64>()));
    let args = [
        "--headless".to_owned(),
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        "--no-first-run".to_owned(),
        format!("--user-data-dir={}", profile.display()),
        "--virtual-time-budget=20000".to_owned(),
        "--dump-dom".to_owned(),
        url.to_owned(),
    ];
    let output = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new("chromium")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium runs (apt-get install chromium)");
        // Bounded: a hung browser is killed (this child, by its handle) after 90 s.
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&profile);
    let dom = String::from_utf8_lossy(&output.stdout).into_owned();
    let start = dom.find("<pre id=\"out\">").unwrap_or_else(|| {
        panic!(
            "no output element; stdout: {dom}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let rest = &dom[start + "<pre id=\"out\">".len()..];
    rest[..rest.find("</pre>").unwrap()]
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
}

/// The page: the gateway's URL and the two tokens come in its query string.
const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8">
<pre id="out">pending</pre>
<script type="module">
import { createClient } from '/sdk/index.js';
const out = document.getElementById('out');
const query = new URLSearchParams(location.search);
let asked = 0;
// The first token has expired: the SDK asks for one again, once, on the 401.
const authToken = async () => (asked++ === 0 ? query.get('expired') : query.get('token'));
const sql = createClient({ url: query.get('gateway'), authToken, retry: false });
try {
  const rows = await sql`select owner, body from notes order by id`;
  const [inserted] = await sql`insert into notes (body) values (${'from the browser'}) returning owner`;
  out.textContent = 'OK ' + JSON.stringify({ rows, inserted, asked });
} catch (error) {
  out.textContent = 'ERR ' + error.kind + ': ' + error.message;
}
</script>
"#;

fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium and the built SDK: scripts/test runs it after building sdk/js"]
async fn a_browser_page_queries_with_a_jwt_and_a_disallowed_origin_gets_the_cors_hint() {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk/js/dist/esm");
    assert!(
        sdk.join("index.js").is_file(),
        "build the SDK first: (cd sdk/js && npm ci && npm run build)"
    );
    let rsa = rs256("r1");
    let jwks = JwksServer::start(&[&rsa.jwk]).await;
    let db = rls_database().await;
    let token = mint(&rsa, &claims("alice", "app_user"));
    let mut stale = claims("alice", "app_user");
    stale["exp"] = (now() - 3600).into();
    let expired = mint(&rsa, &stale);

    // Two page servers, two origins (loopback, other ports than the gateway's); the tenant
    // allows only the first.
    let (allowed, _allowed_task) = page_server(PAGE.to_owned(), sdk.clone()).await;
    let (refused, _refused_task) = page_server(PAGE.to_owned(), sdk.clone()).await;
    let tenant = format!(
        "{}\ncors = {{ origins = [\"{allowed}\"] }}",
        jwt_tenant(&jwks.url, "")
    );
    let (_, hash) = key("acme");
    let gateway = Gateway::start(&config(&db, &hash, &tenant, "")).await;
    let query = format!(
        "/?gateway={}&expired={}&token={}",
        encode(&gateway.url()),
        encode(&expired),
        encode(&token)
    );

    let outcome = run_in_chromium(&format!("{allowed}{query}")).await;
    assert!(outcome.starts_with("OK "), "{outcome}");
    let outcome: serde_json::Value = serde_json::from_str(&outcome[3..]).unwrap();
    // Asked before each request: the expired token, once more after its 401, then for the insert.
    assert_eq!(outcome["asked"], 3, "one refresh after the 401: {outcome}");
    let owners: Vec<&str> = outcome["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["owner"].as_str().unwrap())
        .collect();
    assert_eq!(
        owners,
        ["alice"],
        "row-level security in the browser: {outcome}"
    );
    assert_eq!(outcome["inserted"]["owner"], "alice", "{outcome}");

    let outcome = run_in_chromium(&format!("{refused}{query}")).await;
    assert!(outcome.starts_with("ERR network: "), "{outcome}");
    assert!(outcome.contains("CORS"), "{outcome}");
    gateway.stop().await;
}
