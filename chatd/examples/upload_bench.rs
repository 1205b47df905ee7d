//! Uploads per second for a 2 MB JPEG, end to end: `chatd serve` (every role, one process) on
//! a scratch database, and HTTP clients posting multipart uploads to `POST /api/v1/media`.
//! Each upload is streamed, sniffed, probed, decoded, re-encoded, thumbnailed, stored in a
//! directory and recorded as an event; the figures include all of it.
//!
//! ```text
//! cargo run --release -p chatd --example upload_bench -- [uploads=200] [concurrency=4]
//! ```
//!
//! Needs the local Postgres, Redis and RabbitMQ; creates and drops its own database, broker
//! objects and media directory.

use clap::Parser;
use image::{ImageEncoder, Rgb, RgbImage};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

mod scratch;

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut arguments = std::env::args().skip(1);
    let uploads: usize = arguments
        .next()
        .map(|text| text.parse())
        .transpose()?
        .unwrap_or(200);
    let concurrency: usize = arguments
        .next()
        .map(|text| text.parse())
        .transpose()?
        .unwrap_or(4);
    let namespace = format!("bench_{}", Uuid::now_v7().simple());
    let (database_url, pool) = scratch::database().await?;
    let media_dir = std::env::temp_dir().join(format!("chat_bench_media_{}", Uuid::now_v7()));
    let chatd::Cli {
        command: chatd::Command::Serve(settings),
    } = chatd::Cli::try_parse_from([
        "chatd",
        "serve",
        "--database-url",
        &database_url,
        "--namespace",
        &namespace,
        "--jwt-secret",
        "bench-secret-bench-secret-bench-secret!",
        "--media-store",
        &media_dir.to_string_lossy(),
        "--sends-per-10-seconds",
        "100000",
    ])?
    else {
        anyhow::bail!("serve settings expected");
    };
    let result = run(settings, uploads, concurrency).await;
    if let Ok(connection) = bus::connect(AMQP, "bench-cleanup").await
        && let Ok(channel) = connection.create_channel().await
    {
        let _ = bus::Topology::new(&namespace).delete(&channel).await;
    }
    scratch::drop(&database_url, pool).await;
    let _ = std::fs::remove_dir_all(&media_dir);
    result
}

/// A photo-like JPEG of about 2 MB: smooth gradients with per-pixel noise, as a camera makes.
fn photo() -> anyhow::Result<Vec<u8>> {
    let (width, height) = (2400, 1800);
    let mut state: u32 = 0x2545_f491;
    let image = RgbImage::from_fn(width, height, |x, y| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let noise = (state % 48) as i32 - 24;
        let channel = |base: u32| (base as i32 + noise).clamp(0, 255) as u8;
        Rgb([
            channel(x * 255 / width),
            channel(y * 255 / height),
            channel((x + y) * 127 / (width + height) + 64),
        ])
    });
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 92).write_image(
        image.as_raw(),
        width,
        height,
        image::ExtendedColorType::Rgb8,
    )?;
    Ok(bytes)
}

async fn run(settings: chatd::Settings, uploads: usize, concurrency: usize) -> anyhow::Result<()> {
    let app = chatd::App::start(settings, chatd::Roles::ALL, true).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(app.run(listener, shutdown.clone()));

    let client = reqwest::Client::new();
    let register = client
        .post(format!("{base}/api/v1/auth/register"))
        .json(&serde_json::json!({"username": "bench", "email": "bench@example.com", "password": "bench password"}))
        .send()
        .await?
        .error_for_status()?
        .json::<serde_json::Value>()
        .await?;
    let token = register["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let jpeg = photo()?;
    println!(
        "upload: {} bytes JPEG, 2400 x 1800; {uploads} uploads, {concurrency} at a time",
        jpeg.len()
    );

    let upload = |client: reqwest::Client, jpeg: Vec<u8>, token: String, base: String| async move {
        let started = Instant::now();
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(jpeg).file_name("photo.jpg"),
        );
        let response = client
            .post(format!("{base}/api/v1/media"))
            .bearer_auth(token)
            .multipart(form)
            .send()
            .await?;
        anyhow::ensure!(
            response.status() == reqwest::StatusCode::CREATED,
            "upload answered {}",
            response.status()
        );
        Ok::<Duration, anyhow::Error>(started.elapsed())
    };
    // One upload first, so the figures do not include first-use costs.
    upload(client.clone(), jpeg.clone(), token.clone(), base.clone()).await?;

    let started = Instant::now();
    let mut latencies = Vec::with_capacity(uploads);
    let mut running = tokio::task::JoinSet::new();
    let mut next = 0;
    while latencies.len() < uploads {
        while running.len() < concurrency && next < uploads {
            running.spawn(upload(
                client.clone(),
                jpeg.clone(),
                token.clone(),
                base.clone(),
            ));
            next += 1;
        }
        if let Some(done) = running.join_next().await {
            latencies.push(done??);
        }
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let percentile = |p: f64| {
        let index = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[index].as_secs_f64() * 1000.0
    };
    println!(
        "upload: {:.1} uploads/s ({:.1} MB/s in); latency p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        uploads as f64 / elapsed.as_secs_f64(),
        (uploads * jpeg.len()) as f64 / elapsed.as_secs_f64() / 1e6,
        percentile(0.5),
        percentile(0.9),
        percentile(0.99),
        percentile(1.0),
    );
    shutdown.cancel();
    let _ = server.await;
    Ok(())
}
