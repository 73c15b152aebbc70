//! The recipes of nginx-conf/ with the real programs (ImageMagick, cjpeg, ffmpeg), outputs
//! checked for what they are.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Runs a program with `input` on stdin; returns its stdout.
fn pipe_through(program: &str, args: &[&str], input: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("run {program} (ci/test installs it): {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn identify(image: &[u8]) -> (String, u32, u32) {
    let out = pipe_through("identify", &["-format", "%m %w %h", "-"], image);
    let mut f = out.split_whitespace();
    let format = f.next().unwrap_or_default().to_string();
    let w = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let h = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    (format, w, h)
}

fn post(url: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let dir = temp_dir("post");
    let file = dir.join("body");
    std::fs::write(&file, body).unwrap();
    let (ok, out) = curl(&[
        "-s",
        "-w",
        "\n%{http_code}",
        "--data-binary",
        &format!("@{}", file.display()),
        url,
    ]);
    assert!(ok);
    let split = out.iter().rposition(|&b| b == b'\n').unwrap();
    let code = String::from_utf8_lossy(&out[split + 1..]).parse().unwrap();
    (code, out[..split].to_vec())
}

#[test]
fn imagemagick_thumbnails_from_files_and_uploads_with_a_cache() {
    let s = ExampleServer::start("imagemagick.conf");
    let (ok, jpg) = curl(&["-sf", &s.url("/thumb/rose.jpg?size=200x150")]);
    assert!(ok);
    let (format, w, h) = identify(&jpg);
    assert_eq!(format, "JPEG");
    assert!(w <= 200 && h <= 150 && (w == 200 || h == 150), "{w}x{h}");
    // The second time it comes from nginx's cache: no program runs.
    let (_, head) = curl(&[
        "-s",
        "-D",
        "-",
        "-o",
        "/dev/null",
        &s.url("/thumb/rose.jpg?size=200x150"),
    ]);
    assert!(
        String::from_utf8_lossy(&head).contains("X-Cache: HIT"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    // An uploaded JPEG, resized from stdin.
    let upload = std::fs::read(s.prefix.join("html/images/rose.jpg")).unwrap();
    let (code, out) = post(&s.url("/resize?size=64x64"), &upload);
    assert_eq!(code, 200);
    let (format, w, h) = identify(&out);
    assert_eq!(format, "JPEG");
    assert!(w <= 64 && h <= 64 && (w == 64 || h == 64), "{w}x{h}");
    // Not a JPEG: ImageMagick refuses it, a clean 502.
    let (code, _) = post(
        &s.url("/resize?size=64x64"),
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
    );
    assert_eq!(code, 502);
    // Unvalidated arguments never reach the program.
    let (code, _) = post(&s.url("/resize?size=-write%20/tmp/x"), &upload);
    assert_eq!(code, 400);
    s.stop();
}

#[test]
fn cjpeg_turns_a_posted_ppm_into_jpeg() {
    let s = ExampleServer::start("cjpeg.conf");
    let mut ppm = b"P6\n320 200\n255\n".to_vec();
    for y in 0..200u32 {
        for x in 0..320u32 {
            ppm.extend_from_slice(&[(x % 256) as u8, (y % 256) as u8, 128]);
        }
    }
    let (code, jpg) = post(&s.url("/jpeg?quality=70"), &ppm);
    assert_eq!(code, 200);
    assert_eq!(identify(&jpg), ("JPEG".to_string(), 320, 200));
    let q = pipe_through("identify", &["-format", "%Q", "-"], &jpg);
    assert_eq!(q.trim(), "70", "quality from the query string");
    s.stop();
}

#[test]
fn ffmpeg_streams_while_it_encodes() {
    let s = ExampleServer::start("ffmpeg.conf");
    let seconds = 4;
    let start = Instant::now();
    let mut child = Command::new("curl")
        .args(["-sN", &s.url(&format!("/live.ts?seconds={seconds}"))])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 188];
    std::io::Read::read_exact(&mut out, &mut first).expect("first TS packet");
    let ttfb = start.elapsed();
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut out, &mut rest).unwrap();
    child.wait().unwrap();
    let total = start.elapsed();
    eprintln!("ffmpeg: first byte after {ttfb:?}, whole {seconds} s stream after {total:?}");
    assert_eq!(first[0], 0x47, "MPEG-TS sync byte");
    assert!(
        ttfb < Duration::from_millis(1500),
        "first byte after {ttfb:?}"
    );
    assert!(
        total >= Duration::from_secs(seconds - 1),
        "a real-time stream took {total:?}"
    );
    let mut ts = first.to_vec();
    ts.extend(rest);
    let probe = pipe_through(
        "ffprobe",
        &[
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name,width,height",
            "-of",
            "csv=p=0",
            "-",
        ],
        &ts,
    );
    assert!(
        probe.lines().any(|l| l.starts_with("mpeg2video,320,240")),
        "ffprobe: {probe}"
    );
    s.stop();
}
