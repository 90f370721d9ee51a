//! The headless-browser harness works end to end: chromium loads a page from a loopback server,
//! runs its JavaScript, submits a form, keeps an HttpOnly cookie, evaluates and screenshots.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use reflow_e2e::harness::browser::{Browser, chromium_path};
use reflow_e2e::harness::paths;

const FORM_PAGE: &str = "<!doctype html><title>t</title><form method=post action=/submit>\
<input id=name name=name><button id=go>Go</button></form><p id=js></p>\
<script>document.getElementById('js').textContent='script ran';</script>";

/// Serves `FORM_PAGE` on GET and echoes the posted body with a cookie on POST; up to `n` requests.
fn serve(listener: TcpListener, n: usize) {
    for stream in listener.incoming().take(n) {
        let Ok(mut stream) = stream else { continue };
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut request_line = String::new();
        let _ = reader.read_line(&mut request_line);
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        let _ = reader.read_exact(&mut body);
        let (extra, page) = if request_line.starts_with("POST") {
            (
                "Set-Cookie: sid=abc; HttpOnly; SameSite=Strict; Path=/\r\n",
                format!("<p id=posted>{}</p>", String::from_utf8_lossy(&body)),
            )
        } else {
            ("", FORM_PAGE.to_owned())
        };
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nX-Test: yes\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{page}",
            page.len()
        );
    }
}

#[test]
fn browser_drives_a_real_page() {
    if let Err(reason) = chromium_path() {
        eprintln!("skipping: {reason}");
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || serve(listener, 16));

    let mut browser = Browser::launch().expect("launch chromium");
    let nav = browser.goto(&format!("{base}/")).expect("goto");
    assert_eq!(nav.status, Some(200));
    assert_eq!(nav.header("x-test"), Some("yes"));
    browser
        .wait_for_text("script ran", Duration::from_secs(5))
        .expect("script ran");
    browser.fill("#name", "alice & bob").expect("fill");
    browser.click("#go").expect("click");
    browser
        .wait_for_selector("#posted", Duration::from_secs(5))
        .expect("posted");
    let posted = browser.text(Some("#posted")).expect("text");
    assert_eq!(posted, "name=alice+%26+bob");
    assert!(browser.url().expect("url").ends_with("/submit"));

    let cookies = browser.cookies().expect("cookies");
    let sid = cookies
        .iter()
        .find(|c| c["name"] == "sid")
        .expect("sid cookie");
    assert_eq!(sid["httpOnly"], true);
    assert_eq!(sid["sameSite"], "Strict");
    // HttpOnly: the page's own script cannot read it.
    assert_eq!(browser.eval("document.cookie").expect("eval"), "");
    assert_eq!(browser.eval("1 + 2").expect("eval"), 3);
    assert!(browser.eval("no_such_fn()").is_err(), "errors come back");

    let shot = paths::target_dir().join("e2e/screenshots/browser-harness.png");
    browser.screenshot(&shot).expect("screenshot");
    assert!(std::fs::metadata(&shot).expect("png").len() > 100);

    browser.new_context().expect("new context");
    assert!(browser.cookies().expect("cookies").is_empty());
}
