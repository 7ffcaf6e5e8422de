//! The README's main job: `vantage-lab demo` runs a scenario end to end and
//! prints a report that names the fault.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_demo_names_the_waf_header() {
    let mut out = Vec::new();
    let status = vantage_lab::demo::run(None, &mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(status, "faulty", "{text}");
    assert!(text.contains("origin_blocks_cdn_headers"), "{text}");
    assert!(text.contains("EO-LOG-UUID"), "{text}");
    assert!(text.contains("curl -vo/dev/null"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_is_listed_and_unknown_ones_are_refused() {
    let mut out = Vec::new();
    vantage_lab::demo::list(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    for scenario in vantage_lab::demo::scenarios() {
        assert!(text.contains(scenario.name), "{text}");
    }
    let err = vantage_lab::demo::run(Some("nope"), &mut Vec::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--list"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlist_demo_names_the_edge_blocked_at_the_origin() {
    let mut out = Vec::new();
    let status = vantage_lab::demo::run(Some("allowlist"), &mut out)
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(status, "faulty", "{text}");
    assert!(text.contains("origin_blocks_edge"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_demo_names_the_slow_origin_and_the_hijacked_region() {
    if vantage_lab::netns::skipped("mixed_demo_names_the_slow_origin_and_the_hijacked_region") {
        return;
    }
    let mut out = Vec::new();
    let status = vantage_lab::demo::run(Some("mixed"), &mut out)
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(status, "faulty", "{text}");
    assert!(text.contains("origin_slow"), "{text}");
    assert!(text.contains("carrier_interference"), "{text}");
    assert!(text.contains("http_injection"), "{text}");
    assert!(text.contains("ap-southeast"), "{text}");
}
