//! Image uploads end to end: validation against a corpus of good and hostile files, what is
//! stored, signed links, attachments over REST and WebSocket, avatars, and an `<img>` tag in
//! a real browser.

use futures::StreamExt;
use media::corpus;
use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use uuid::Uuid;

use crate::helpers::{
    TestApp, TestUser, eventually, fresh_settings, header, headless_dom, json_body, spawn_app,
    spawn_app_with,
};
use crate::websocket::{connect, next_event, next_reply, ready, send_frame};

fn form(bytes: Vec<u8>, file_name: &str, declared_type: &str) -> Form {
    let part = Part::bytes(bytes)
        .file_name(file_name.to_owned())
        .mime_str(declared_type)
        .unwrap_or_else(|error| panic!("{error}"));
    Form::new().part("file", part)
}

async fn upload_form(app: &TestApp, user: &TestUser, form: Form) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/media"))
        .bearer_auth(&user.access_token)
        .multipart(form)
        .send()
        .await
        .unwrap_or_else(|error| panic!("upload: {error}"))
}

async fn upload_response(app: &TestApp, user: &TestUser, bytes: Vec<u8>) -> reqwest::Response {
    upload_form(app, user, form(bytes, "picture.png", "image/png")).await
}

/// Uploads an image and returns its `Media`.
async fn upload(app: &TestApp, user: &TestUser, bytes: Vec<u8>) -> Value {
    let response = upload_response(app, user, bytes).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    json_body(response).await
}

async fn fetch(app: &TestApp, url: &str) -> reqwest::Response {
    app.client
        .get(app.url(url))
        .send()
        .await
        .unwrap_or_else(|error| panic!("GET {url}: {error}"))
}

async fn media_event_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'media'")
        .fetch_one(&app.pool)
        .await
        .unwrap_or_else(|error| panic!("{error}"))
}

/// Every file under the app's media directory.
fn stored_files(app: &TestApp) -> Vec<std::path::PathBuf> {
    fn walk(dir: &std::path::Path, files: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, files);
            } else {
                files.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(std::path::Path::new(&app.settings.media_store), &mut files);
    files
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[tokio::test]
async fn each_image_type_is_stored_re_encoded_and_served_with_its_headers() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let cases: [(Vec<u8>, &str, &[u8]); 4] = [
        (corpus::png(640, 480), "image/png", b"\x89PNG"),
        (corpus::jpeg(640, 480), "image/jpeg", b"\xff\xd8\xff"),
        (corpus::gif(640, 480), "image/gif", b"GIF8"),
        (corpus::webp(640, 480), "image/webp", b"RIFF"),
    ];
    for (bytes, content_type, magic) in cases {
        // The declared name and type lie; the bytes decide.
        let response = upload_form(&app, &alice, form(bytes, "notes.txt", "text/plain")).await;
        assert_eq!(response.status(), StatusCode::CREATED, "{content_type}");
        let consistency = header(&response, "x-consistency-token");
        assert!(consistency.is_some());
        let media = json_body(response).await;
        assert_eq!(media["content_type"], content_type);
        assert_eq!(
            (media["width"].as_i64(), media["height"].as_i64()),
            (Some(640), Some(480))
        );
        assert!(
            media["id"]
                .as_str()
                .and_then(|id| id.parse::<Uuid>().ok())
                .is_some()
        );

        let url = media["url"].as_str().unwrap_or_default();
        let response = fetch(&app, url).await;
        assert_eq!(response.status(), StatusCode::OK, "{url}");
        assert_eq!(
            header(&response, "content-type").as_deref(),
            Some(content_type)
        );
        assert_eq!(
            header(&response, "x-content-type-options").as_deref(),
            Some("nosniff")
        );
        // An image fetch reads no read model: no lag query, no lag header.
        assert_eq!(header(&response, "x-read-model-lag-ms"), None);
        let cache = header(&response, "cache-control").unwrap_or_default();
        assert!(cache.starts_with("private, max-age="), "{cache}");
        let etag = header(&response, "etag").unwrap_or_default();
        assert!(etag.starts_with('"'), "{etag}");
        let length = header(&response, "content-length").unwrap_or_default();
        let bytes = response.bytes().await.unwrap_or_default();
        assert_eq!(length, bytes.len().to_string());
        assert_eq!(Some(bytes.len() as i64), media["size"].as_i64());
        assert!(bytes.starts_with(magic), "{content_type}");
        let (width, height) = media::dimensions(&bytes).unwrap_or_else(|error| panic!("{error}"));
        assert_eq!((width, height), (640, 480));

        // A client holding the bytes revalidates without downloading them again.
        let revalidated = app
            .client
            .get(app.url(url))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(revalidated.status(), StatusCode::NOT_MODIFIED);

        let thumbnail = fetch(&app, media["thumbnail_url"].as_str().unwrap_or_default()).await;
        assert_eq!(thumbnail.status(), StatusCode::OK);
        assert_eq!(
            header(&thumbnail, "content-type").as_deref(),
            Some(content_type)
        );
        let bytes = thumbnail.bytes().await.unwrap_or_default();
        let (width, height) = media::dimensions(&bytes).unwrap_or_else(|error| panic!("{error}"));
        assert_eq!((width, height), (320, 240), "{content_type} thumbnail");

        // The uploader reads it back through the API.
        let id = media["id"].as_str().unwrap_or_default();
        let response = app
            .get(
                &format!("/api/v1/media/{id}"),
                Some(&alice.access_token),
                consistency.as_deref(),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(json_body(response).await["content_type"], content_type);
    }
    assert_eq!(media_event_count(&app).await, 4);
}

#[tokio::test]
async fn exif_gps_and_appended_payloads_never_reach_the_stored_bytes() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let with_exif = corpus::jpeg_with_exif_gps(800, 600);
    assert!(contains(&with_exif, corpus::EXIF_MARKER.as_bytes()));
    let media = upload(&app, &alice, with_exif).await;
    for url in [&media["url"], &media["thumbnail_url"]] {
        let bytes = fetch(&app, url.as_str().unwrap_or_default())
            .await
            .bytes()
            .await
            .unwrap_or_default();
        assert!(!contains(&bytes, corpus::EXIF_MARKER.as_bytes()));
        assert!(!contains(&bytes, b"Exif"));
    }
    let appended = corpus::jpeg_with_appended_payload();
    assert!(contains(&appended, corpus::APPENDED_MARKER.as_bytes()));
    let media = upload(&app, &alice, appended).await;
    let bytes = fetch(&app, media["url"].as_str().unwrap_or_default())
        .await
        .bytes()
        .await
        .unwrap_or_default();
    assert!(
        bytes.ends_with(&[0xff, 0xd9]),
        "nothing after the end of the image"
    );
    assert!(!contains(&bytes, corpus::APPENDED_MARKER.as_bytes()));
    // What is on disk is what was served: no original bytes were kept anywhere.
    let files = stored_files(&app);
    assert_eq!(files.len(), 4, "{files:?}");
    for file in files {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(
            !contains(&bytes, corpus::EXIF_MARKER.as_bytes()),
            "{}",
            file.display()
        );
        assert!(!contains(&bytes, b"Exif"), "{}", file.display());
    }
}

/// The peak resident memory of this test process, in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_pixel_bomb_is_refused_quickly_without_a_large_allocation() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bomb = corpus::pixel_bomb_png();
    assert!(bomb.len() < 4096, "the bomb itself is tiny");
    let peak_before = peak_rss_kib();
    let started = Instant::now();
    let response = upload_response(&app, &alice, bomb).await;
    let took = started.elapsed();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(json_body(response).await["code"], "image_too_large");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    // Decoding 60000 × 60000 pixels would need gigabytes; the process (server included) grew
    // by less than 64 MiB at its peak.
    let grown = peak_rss_kib().saturating_sub(peak_before);
    assert!(grown < 64 * 1024, "peak memory grew by {grown} KiB");
    assert_eq!(media_event_count(&app).await, 0);
    assert!(stored_files(&app).is_empty());
}

#[tokio::test]
async fn files_that_are_not_images_are_refused_and_nothing_is_stored() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let cases = [
        ("html renamed .png", corpus::html_as_png()),
        ("svg renamed .png", corpus::svg_as_png()),
        ("GIF header then script", corpus::gif_header_then_script()),
        ("zero bytes", Vec::new()),
        ("truncated JPEG", corpus::truncated_jpeg()),
    ];
    for (case, bytes) in cases {
        let response = upload_response(&app, &alice, bytes).await;
        assert_eq!(
            response.status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{case}"
        );
        assert_eq!(
            header(&response, "content-type").as_deref(),
            Some("application/problem+json")
        );
        let problem = json_body(response).await;
        assert!(
            ["unsupported_media_type", "invalid_image"]
                .contains(&problem["code"].as_str().unwrap_or_default()),
            "{case}: {problem}"
        );
    }
    // Malformed requests are 400s.
    let no_file = Form::new().text("comment", "no file here");
    let response = upload_form(&app, &alice, no_file).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let two_files = form(corpus::png(8, 8), "a.png", "image/png")
        .part("file", Part::bytes(corpus::png(8, 8)).file_name("b.png"));
    let response = upload_form(&app, &alice, two_files).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let not_multipart = app
        .post(
            "/api/v1/media",
            Some(&alice.access_token),
            &json!({"file": "x"}),
        )
        .await;
    assert_eq!(not_multipart.status(), StatusCode::BAD_REQUEST);
    let anonymous = app
        .client
        .post(app.url("/api/v1/media"))
        .multipart(form(corpus::png(8, 8), "a.png", "image/png"))
        .send()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(media_event_count(&app).await, 0);
    assert!(stored_files(&app).is_empty());
}

#[tokio::test]
async fn an_upload_over_the_limit_is_refused_without_reading_the_rest() {
    let mut settings = fresh_settings();
    settings.media_max_bytes = 1024 * 1024;
    let app = spawn_app_with(settings, chatd::app::Roles::ALL).await;
    let alice = app.register("alice").await;

    // Exactly at the limit is fine as far as size goes (it is not an image: 415)...
    let at_limit = vec![0u8; 1024 * 1024];
    let response = upload_response(&app, &alice, at_limit).await;
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // ...one byte over is 413.
    let mut over = corpus::png(8, 8);
    over.resize(1024 * 1024 + 1, 0);
    let response = upload_response(&app, &alice, over).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json_body(response).await["code"], "file_too_large");

    // A body that announces 100 MB and then stalls is answered at once, from its header.
    let stalled = futures::stream::iter([Ok::<_, std::io::Error>(vec![0u8; 1024])])
        .chain(futures::stream::pending());
    let started = Instant::now();
    let response = app
        .client
        .post(app.url("/api/v1/media"))
        .bearer_auth(&alice.access_token)
        .header("content-type", "multipart/form-data; boundary=xyz")
        .header("content-length", (100 * 1024 * 1024).to_string())
        .body(reqwest::Body::wrap_stream(stalled))
        .send();
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .unwrap_or_else(|_| panic!("no answer within 5 s"))
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(started.elapsed() < Duration::from_secs(5));

    // Chunked (no length): refused as soon as the file part passes the limit, although the
    // client has not finished sending.
    let mut head = b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n".to_vec();
    head.extend(corpus::png(8, 8));
    let chunks = vec![head]
        .into_iter()
        .chain(std::iter::repeat_n(vec![0u8; 64 * 1024], 20))
        .map(Ok::<_, std::io::Error>);
    let stalled = futures::stream::iter(chunks).chain(futures::stream::pending());
    let response = app
        .client
        .post(app.url("/api/v1/media"))
        .bearer_auth(&alice.access_token)
        .header("content-type", "multipart/form-data; boundary=xyz")
        .body(reqwest::Body::wrap_stream(stalled))
        .send();
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .unwrap_or_else(|_| panic!("no answer within 5 s: the server kept reading"))
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(media_event_count(&app).await, 0);
}

/// A link for `media` signed with the app's key, with any expiry.
fn link(app: &TestApp, media: &Value, variant: web::media_links::Variant, expires: i64) -> String {
    let secret = sessions::JwtSecret::new(
        app.settings
            .jwt_secret
            .clone()
            .unwrap_or_default()
            .into_bytes(),
    );
    let links = web::MediaLinks::new(
        secret.derive_key("chat media links v1"),
        app.settings.media_link_ttl_secs,
        "",
    );
    let id: Uuid = media["id"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .unwrap_or_default();
    let image_type = domain::media::ImageType::from_content_type(
        media["content_type"].as_str().unwrap_or_default(),
    )
    .unwrap_or_else(|| panic!("{media}"));
    links.url(id, variant, image_type, expires)
}

#[tokio::test]
async fn signed_links_refuse_tampering_and_expiry() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let media = upload(&app, &alice, corpus::png(64, 64)).await;
    let url = media["url"].as_str().unwrap_or_default().to_owned();
    assert_eq!(fetch(&app, &url).await.status(), StatusCode::OK);

    let now = chrono::Utc::now().timestamp();
    let fresh = link(&app, &media, web::media_links::Variant::Original, now + 60);
    assert_eq!(fetch(&app, &fresh).await.status(), StatusCode::OK);
    let expired = link(&app, &media, web::media_links::Variant::Original, now - 1);
    let response = fetch(&app, &expired).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(json_body(response).await["code"], "link_expired");

    let (path, query) = url.split_once('?').unwrap_or_default();
    let signature = query.split("signature=").nth(1).unwrap_or_default();
    let expires: i64 = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("expires="))
        .and_then(|value| value.parse().ok())
        .unwrap_or_default();
    let mut flipped = signature.to_owned();
    let last = if flipped.ends_with('A') { "B" } else { "A" };
    flipped.replace_range(flipped.len() - 1.., last);
    let other_id = Uuid::now_v7();
    let id = media["id"].as_str().unwrap_or_default();
    let tampered = [
        format!("{path}?expires={expires}&signature={flipped}"),
        format!("{path}?expires={}&signature={signature}", expires + 3600),
        format!("{}?{query}", path.replace("original", "thumbnail")),
        format!("{}?{query}", path.replace(id, &other_id.to_string())),
        format!("{}?{query}", path.replace(".png", ".gif")),
        path.to_owned(),
    ];
    for url in tampered {
        let response = fetch(&app, &url).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{url}");
        assert_eq!(
            json_body(response).await["code"],
            "invalid_signature",
            "{url}"
        );
    }
}

#[tokio::test]
async fn only_the_uploader_and_members_where_it_is_attached_may_see_an_image() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let response = upload_response(&app, &alice, corpus::jpeg(320, 200)).await;
    let uploaded = header(&response, "x-consistency-token");
    let media = json_body(response).await;
    let id = media["id"].as_str().unwrap_or_default().to_owned();
    let path = format!("/api/v1/media/{id}");
    // Once the upload is in the read model, its uploader sees it and nobody else does.
    let response = app
        .get(&path, Some(&alice.access_token), uploaded.as_deref())
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    for user in [&bob, &carol] {
        let response = app.get(&path, Some(&user.access_token), None).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(json_body(response).await["code"], "media_not_found");
    }
    // Bob may not attach Alice's image.
    let response = app
        .post(
            "/api/v1/conversations",
            Some(&alice.access_token),
            &json!({"type": "direct", "user_id": bob.id}),
        )
        .await;
    let conversation = json_body(response).await;
    let conversation_id = conversation["id"].as_str().unwrap_or_default().to_owned();
    let messages = format!("/api/v1/conversations/{conversation_id}/messages");
    let response = app
        .post(
            &messages,
            Some(&bob.access_token),
            &json!({"attachment_ids": [id]}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(json_body(response).await["code"], "attachment_not_found");
    // Alice attaches it: Bob, a member, sees it; Carol still does not.
    let response = app
        .post(
            &messages,
            Some(&alice.access_token),
            &json!({"body": "look", "attachment_ids": [id]}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let consistency = header(&response, "x-consistency-token");
    let response = app
        .get(&path, Some(&bob.access_token), consistency.as_deref())
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = app.get(&path, Some(&carol.access_token), None).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn attachments_travel_over_rest_and_websocket_as_media() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let response = app
        .post(
            "/api/v1/conversations",
            Some(&alice.access_token),
            &json!({"type": "direct", "user_id": bob.id}),
        )
        .await;
    let conversation_id = json_body(response).await["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut bob_socket = connect(&app, &bob.access_token).await;
    ready(&mut bob_socket).await;
    let first = upload(&app, &alice, corpus::png(100, 80)).await;
    let second = upload(&app, &alice, corpus::webp(90, 60)).await;

    // REST: an image-only message.
    let messages = format!("/api/v1/conversations/{conversation_id}/messages");
    let response = app
        .post(
            &messages,
            Some(&alice.access_token),
            &json!({"attachment_ids": [first["id"], second["id"]]}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let sent = json_body(response).await;
    assert_eq!(sent["kind"], "image");
    assert_eq!(sent["body"], Value::Null);
    let attachments = sent["attachments"].as_array().cloned().unwrap_or_default();
    assert_eq!(attachments.len(), 2);
    assert_eq!(attachments[0]["id"], first["id"]);
    assert_eq!(attachments[1]["content_type"], "image/webp");
    assert_eq!(
        (
            attachments[0]["width"].as_i64(),
            attachments[0]["height"].as_i64()
        ),
        (Some(100), Some(80))
    );

    // The push to Bob carries the same Media, with links that work for him. Bob may have
    // connected before the push of the conversation's creation reached him: then that comes
    // first, live.
    let mut event = next_event(&mut bob_socket).await;
    if event["event"] == "conversation.created" {
        event = next_event(&mut bob_socket).await;
    }
    assert_eq!(event["event"], "message.created", "{event}");
    let pushed = event["data"]["attachments"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(pushed.len(), 2, "{event}");
    assert_eq!(pushed[1]["id"], second["id"]);
    let response = fetch(
        &app,
        pushed[1]["thumbnail_url"].as_str().unwrap_or_default(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "content-type").as_deref(),
        Some("image/webp")
    );

    // WebSocket: Alice sends text with an image through the socket.
    let mut alice_socket = connect(&app, &alice.access_token).await;
    ready(&mut alice_socket).await;
    let third = upload(&app, &alice, corpus::gif(50, 50)).await;
    send_frame(
        &mut alice_socket,
        json!({"type": "message.send", "ref": "img", "conversation_id": conversation_id,
               "client_message_id": "ws-img", "body": "and a gif", "attachment_ids": [third["id"]]}),
    )
    .await;
    let ack = next_reply(&mut alice_socket).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["result"]["kind"], "text");
    assert_eq!(ack["result"]["attachments"][0]["id"], third["id"]);
    let event = next_event(&mut bob_socket).await;
    assert_eq!(
        event["data"]["attachments"][0]["content_type"], "image/gif",
        "{event}"
    );

    // Refusals change nothing: someone else's image, a missing one, eleven images.
    let carol = app.register("carol").await;
    let carols = upload(&app, &carol, corpus::png(8, 8)).await;
    let before = app.event_count().await;
    for (attachment_ids, status, code) in [
        (
            json!([carols["id"]]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "attachment_not_found",
        ),
        (
            json!([Uuid::now_v7()]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "attachment_not_found",
        ),
        (
            json!(vec![first["id"].clone(); 11]),
            StatusCode::BAD_REQUEST,
            "invalid_attachments",
        ),
        (
            json!([first["id"], first["id"]]),
            StatusCode::BAD_REQUEST,
            "invalid_attachments",
        ),
    ] {
        let response = app
            .post(
                &messages,
                Some(&alice.access_token),
                &json!({"attachment_ids": attachment_ids}),
            )
            .await;
        assert_eq!(response.status(), status, "{attachment_ids}");
        assert_eq!(json_body(response).await["code"], code);
    }
    assert_eq!(app.event_count().await, before);

    // History shows them too, once projected.
    let projected = eventually(Duration::from_secs(5), || async {
        let response = app.get(&messages, Some(&bob.access_token), None).await;
        json_body(response).await["items"]
            .as_array()
            .is_some_and(|items| items.len() == 2)
    })
    .await;
    assert!(projected, "the two messages were not projected");
    let history = json_body(app.get(&messages, Some(&bob.access_token), None).await).await;
    let items = history["items"].as_array().cloned().unwrap_or_default();
    let with_images: Vec<&Value> = items
        .iter()
        .filter(|message| !message["attachments"].as_array().is_none_or(Vec::is_empty))
        .collect();
    assert_eq!(with_images.len(), 2, "{history}");
    assert_eq!(with_images[0]["attachments"][1]["id"], second["id"]);
    assert!(
        with_images[1]["attachments"][0]["url"]
            .as_str()
            .is_some_and(|url| url.contains("/original.gif?"))
    );
}

#[tokio::test]
async fn an_avatar_is_anyones_to_see() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let bobs = upload(&app, &bob, corpus::png(8, 8)).await;
    let response = app
        .patch(
            "/api/v1/users/me",
            &alice.access_token,
            &json!({"avatar_media_id": bobs["id"]}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(json_body(response).await["code"], "media_not_found");

    // Bob shares a conversation with Alice, so her profile changes reach his socket.
    app.post(
        "/api/v1/conversations",
        Some(&alice.access_token),
        &json!({"type": "direct", "user_id": bob.id}),
    )
    .await;
    let mut bob_socket = connect(&app, &bob.access_token).await;
    ready(&mut bob_socket).await;
    let avatar = upload(&app, &alice, corpus::jpeg(400, 400)).await;
    let response = app
        .patch(
            "/api/v1/users/me",
            &alice.access_token,
            &json!({"avatar_media_id": avatar["id"]}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let pushed = loop {
        let event = next_event(&mut bob_socket).await;
        if event["event"] == "user.updated" {
            break event;
        }
    };
    assert_eq!(pushed["data"]["avatar"]["id"], avatar["id"], "{pushed}");
    let pushed_url = pushed["data"]["avatar"]["url"].as_str().unwrap_or_default();
    assert_eq!(fetch(&app, pushed_url).await.status(), StatusCode::OK);
    let consistency = header(&response, "x-consistency-token");
    let user = json_body(response).await;
    assert_eq!(user["avatar"]["id"], avatar["id"]);
    let response = app
        .get(
            &format!("/api/v1/users/{}", alice.id),
            Some(&bob.access_token),
            consistency.as_deref(),
        )
        .await;
    let seen = json_body(response).await;
    assert_eq!(seen["avatar"]["id"], avatar["id"], "{seen}");
    assert_eq!(seen["avatar"]["width"], 400);
    let response = fetch(
        &app,
        seen["avatar"]["thumbnail_url"].as_str().unwrap_or_default(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = app
        .get(
            &format!(
                "/api/v1/media/{}",
                avatar["id"].as_str().unwrap_or_default()
            ),
            Some(&bob.access_token),
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    // Logging in again shows it too; clearing it removes it.
    let response = app.login(&alice.username, crate::helpers::PASSWORD).await;
    assert_eq!(
        json_body(response).await["user"]["avatar"]["id"],
        avatar["id"]
    );
    let response = app
        .patch(
            "/api/v1/users/me",
            &alice.access_token,
            &json!({"avatar_media_id": null}),
        )
        .await;
    assert_eq!(json_body(response).await["avatar"], Value::Null);
}

#[tokio::test]
async fn an_upload_retried_with_its_idempotency_key_is_stored_once() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let response = app
            .client
            .post(app.url("/api/v1/media"))
            .bearer_auth(&alice.access_token)
            .header("idempotency-key", "upload-1")
            .multipart(form(corpus::png(32, 32), "a.png", "image/png"))
            .send()
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(response.status(), StatusCode::CREATED);
        ids.push(json_body(response).await["id"].clone());
    }
    assert_eq!(ids[0], ids[1]);
    assert_eq!(media_event_count(&app).await, 1);
}

#[tokio::test]
async fn a_signed_link_works_in_an_img_tag_of_a_real_browser() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let media = upload(&app, &alice, corpus::png(64, 48)).await;
    let good = app.url(media["url"].as_str().unwrap_or_default());
    let expired = app.url(&link(
        &app,
        &media,
        web::media_links::Variant::Original,
        chrono::Utc::now().timestamp() - 10,
    ));
    let page = format!(
        r#"<!doctype html><html><body>
<img id="good" src="{good}"><img id="expired" src="{expired}">
<pre id="result">pending</pre>
<script>
const seen = {{}};
function report() {{
  if (Object.keys(seen).length === 2) document.getElementById('result').textContent = JSON.stringify(seen);
}}
for (const id of ['good', 'expired']) {{
  const img = document.getElementById(id);
  img.onload = () => {{ seen[id] = 'loaded ' + img.naturalWidth + 'x' + img.naturalHeight; report(); }};
  img.onerror = () => {{ seen[id] = 'error'; report(); }};
}}
</script></body></html>"#
    );
    let file = std::env::temp_dir().join(format!("chatd-img-{}.html", Uuid::now_v7()));
    std::fs::write(&file, page).unwrap_or_else(|error| panic!("{error}"));
    let dom = headless_dom(&format!("file://{}", file.display())).await;
    let _ = std::fs::remove_file(&file);
    assert!(dom.contains(r#""good":"loaded 64x48""#), "{dom}");
    assert!(dom.contains(r#""expired":"error""#), "{dom}");
}

/// An S3-compatible server for one test: moto's server mode (`pip install 'moto[server]'`,
/// done by scripts/test.sh), on a free port, killed on drop.
struct S3Server {
    port: u16,
    _child: tokio::process::Child,
}

impl S3Server {
    async fn start() -> S3Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .unwrap_or_else(|error| panic!("{error}"));
        let child = tokio::process::Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| {
                panic!("moto_server missing ({error}): scripts/test.sh installs moto[server]")
            });
        let client = reqwest::Client::new();
        let up = eventually(Duration::from_secs(20), || async {
            client
                .get(format!("http://127.0.0.1:{port}/"))
                .send()
                .await
                .is_ok()
        })
        .await;
        assert!(up, "moto_server did not start");
        S3Server {
            port,
            _child: child,
        }
    }
}

#[tokio::test]
async fn uploads_go_to_an_s3_bucket_when_configured() {
    let s3 = S3Server::start().await;
    let endpoint = format!("http://127.0.0.1:{}", s3.port);
    let created = reqwest::Client::new()
        .put(format!("{endpoint}/chat-media"))
        .send()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert!(
        created.status().is_success(),
        "bucket: {}",
        created.status()
    );
    let mut settings = fresh_settings();
    settings.media_store = "s3://chat-media/uploads".to_owned();
    settings.media_s3_options = [
        ("AWS_ENDPOINT", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_SOMETHING_UNKNOWN", "ignored"),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.to_owned()))
    .collect();
    let app = spawn_app_with(settings, chatd::app::Roles::ALL).await;
    let alice = app.register("alice").await;
    let media = upload(&app, &alice, corpus::png(120, 90)).await;
    let response = fetch(&app, media["url"].as_str().unwrap_or_default()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.bytes().await.unwrap_or_default();
    assert_eq!(media::dimensions(&bytes).ok(), Some((120, 90)));
    // The objects are in the bucket, under the prefix, and nowhere on disk.
    let listing = reqwest::Client::new()
        .get(format!(
            "{endpoint}/chat-media?list-type=2&prefix=uploads/media/"
        ))
        .send()
        .await
        .unwrap_or_else(|error| panic!("{error}"))
        .text()
        .await
        .unwrap_or_default();
    let id = media["id"].as_str().unwrap_or_default();
    for key in ["original.png", "thumbnail.png"] {
        assert!(
            listing.contains(&format!("uploads/media/{id}/{key}")),
            "{key} not in the bucket: {listing}"
        );
    }
    assert!(stored_files(&app).is_empty());
}
