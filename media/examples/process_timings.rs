//! Prints how long `process` takes per format on a 12-megapixel upload, and the sizes it
//! produces: `cargo run --release -p media --features corpus --example process_timings`.

use std::time::Instant;

use media::corpus;
use media::{Limits, process};

fn main() {
    let (width, height) = (4000, 3000);
    let uploads = [
        ("PNG", corpus::png(width, height)),
        ("JPEG", corpus::jpeg(width, height)),
        ("GIF", corpus::gif(width, height)),
        ("WebP", corpus::webp(width, height)),
        ("GIF, 3 frames", corpus::animated_gif(width, height, 3)),
    ];
    println!("{width} x {height}:");
    for (name, upload) in uploads {
        let started = Instant::now();
        let result = process(&upload, &Limits::default());
        let elapsed = started.elapsed();
        match result {
            Ok(processed) => println!(
                "{name:>14}: {:>7.1} ms, upload {} B, original {} B, thumbnail {} B",
                elapsed.as_secs_f64() * 1000.0,
                upload.len(),
                processed.original.len(),
                processed.thumbnail.len()
            ),
            Err(rejection) => println!("{name:>14}: rejected: {rejection}"),
        }
    }
}
