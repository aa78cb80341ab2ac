//! The browser harness itself, before the portal's pages use it (issue 19): Debian's Chromium,
//! headless, driven over WebDriver, reaches the API over HTTPS and shows what it serves.

use posflow_e2e::api::Api;
use posflow_e2e::browser::Browser;
use posflow_e2e::Deployment;
use serde_json::Value;

#[tokio::test]
async fn a_real_chromium_renders_what_the_api_serves_over_https() {
    let d = Deployment::kafka_only().await.with_api_schema().await;
    let api = Api::start(&d, &[]).await;
    let browser = Browser::start().await;
    browser.goto(&format!("{}/v1/openapi.json", api.base)).await;
    assert!(browser.url().await.starts_with("https://127.0.0.1:"));
    // Chromium shows a JSON answer as the text of one <pre>: the document, whole.
    let shown: Value = serde_json::from_str(&browser.text("pre").await).expect("JSON on the page");
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json"))
            .expect("docs/openapi.json"),
    )
    .unwrap();
    assert_eq!(shown, committed);
    let png = browser.screenshot("harness-openapi").await;
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is a PNG",
        png.display()
    );
    assert!(bytes.len() > 10_000, "a rendered page, not a blank one");
}
