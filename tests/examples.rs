//! Every configuration in nginx-conf/ is loaded by nginx (`nginx -t`), and the demo's is served
//! for real: thumbnails checked with ImageMagick's identify, streams byte-counted.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A prefix laid out as ci/demo lays it out: modules/, logs/, html/images/ with two pictures.
fn demo_prefix() -> PathBuf {
    let prefix = temp_dir("example");
    std::fs::create_dir_all(prefix.join("modules")).unwrap();
    std::fs::create_dir_all(prefix.join("html/images")).unwrap();
    std::os::unix::fs::symlink(
        module_path(),
        prefix.join("modules/ngx_http_transform_module.so"),
    )
    .unwrap();
    for (builtin, name, resize) in [
        ("rose:", "rose.jpg", "1200x"),
        ("logo:", "logo.jpg", "100%"),
    ] {
        let ok = Command::new("convert")
            .args([builtin, "-resize", resize])
            .arg(prefix.join("html/images").join(name))
            .status()
            .expect("run convert (ImageMagick; ci/test installs it)")
            .success();
        assert!(ok, "convert could not make {name}");
    }
    prefix
}

fn conf_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("nginx-conf");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_configuration_loads() {
    let files = conf_files();
    assert!(files.len() >= 2, "examples: {files:?}");
    for conf in files {
        let prefix = demo_prefix();
        let out = Command::new(nginx_binary())
            .arg("-t")
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} does not load: {}",
            conf.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::remove_dir_all(prefix).ok();
    }
}

/// Dimensions of an image, by ImageMagick's identify.
fn identify(image: &[u8]) -> String {
    let mut child = Command::new("identify")
        .args(["-format", "%m %wx%h", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("identify");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(image).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn demo_configuration_serves_thumbnails_and_streams() {
    for name in ["demo.conf", "minimal.conf"] {
        let prefix = demo_prefix();
        let port = free_port();
        let src = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("nginx-conf")
                .join(name),
        )
        .unwrap();
        assert!(src.contains("listen 127.0.0.1:8080;"));
        let conf = prefix.join(name);
        std::fs::write(
            &conf,
            src.replace(
                "listen 127.0.0.1:8080;",
                &format!("listen 127.0.0.1:{port};"),
            ),
        )
        .unwrap();
        let mut master = Command::new(nginx_binary())
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "{name}: nginx did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let base = format!("http://127.0.0.1:{port}");

        let (ok, jpg) = curl(&["-sf", &format!("{base}/thumb/rose.jpg?size=120x80")]);
        assert!(ok, "{name}: thumbnail request failed");
        let id = identify(&jpg);
        assert!(id.starts_with("JPEG "), "{name}: not a JPEG: {id}");
        let (w, h) = id[5..]
            .split_once('x')
            .map(|(w, h)| (w.parse::<u32>().unwrap(), h.parse::<u32>().unwrap()))
            .unwrap();
        assert!(
            w <= 120 && h <= 80 && (w == 120 || h == 80),
            "{name}: thumbnail is {w}x{h}"
        );

        let code = |path: &str| {
            let (_, out) = curl(&[
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("{base}{path}"),
            ]);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            code("/thumb/rose.jpg?size=huge"),
            "400",
            "{name}: unvalidated size"
        );
        assert_eq!(
            code("/thumb/rose.jpg?size=-write"),
            "400",
            "{name}: option injection"
        );
        assert_eq!(
            code("/thumb/none.jpg?size=10x10"),
            "404",
            "{name}: missing picture"
        );

        if name == "demo.conf" {
            let (ok, png) = curl(&["-sf", &format!("{base}/png/logo.jpg")]);
            assert!(ok);
            assert!(identify(&png).starts_with("PNG "), "PNG conversion");
            for path in ["/stream?bytes=50000000", "/stream-buffered?bytes=50000000"] {
                let (ok, out) = curl(&[
                    "-sf",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{size_download}",
                    &format!("{base}{path}"),
                ]);
                assert!(ok);
                assert_eq!(String::from_utf8(out).unwrap(), "50000000", "{path}");
            }
            let (ok, out) = curl(&["-sf", &format!("{base}/vmstat")]);
            assert!(ok);
            assert_eq!(
                String::from_utf8(out).unwrap().lines().count(),
                7,
                "vmstat: 2 header lines, 5 samples"
            );
        }
        let log = std::fs::read_to_string(prefix.join("logs/error.log")).unwrap_or_default();
        // SAFETY: signalling our own nginx master.
        unsafe { libc::kill(master.id() as i32, libc::SIGQUIT) };
        master.wait().unwrap();
        assert!(
            !log.contains("[alert]") && !log.contains("[emerg]") && !log.contains("[crit]"),
            "{name}: {log}"
        );
        std::fs::remove_dir_all(prefix).ok();
    }
}
