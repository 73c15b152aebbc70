//! Every configuration in nginx-conf/ is loaded by nginx (`nginx -t`), and the demo's is served
//! for real: thumbnails checked with ImageMagick's identify, streams byte-counted. So is the
//! opening example of README.md.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

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
        let prefix = example_prefix();
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

/// The opening example of README.md: its first `nginx` block.
fn readme_example() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(path).unwrap();
    let open = "```nginx\n";
    let start = readme.find(open).expect("an nginx block in README.md") + open.len();
    let len = readme[start..].find("```").expect("the end of the block");
    readme[start..start + len].to_string()
}

#[test]
fn the_readme_opening_example_is_a_complete_configuration() {
    let s = ExampleServer::start_text("readme.conf", &readme_example());
    let (ok, jpg) = curl(&["-sf", &s.url("/thumb/rose.jpg?size=120x80")]);
    assert!(ok, "thumbnail request failed");
    let id = identify(&jpg);
    assert!(id.starts_with("JPEG "), "not a JPEG: {id}");
    let code = |path: &str| {
        let (_, out) = curl(&["-s", "-o", "/dev/null", "-w", "%{http_code}", &s.url(path)]);
        String::from_utf8(out).unwrap()
    };
    assert_eq!(code("/thumb/rose.jpg?size=huge"), "400", "unvalidated size");
    assert_eq!(code("/thumb/rose.jpg"), "400", "no size");
    s.stop();
}

#[test]
fn demo_configuration_serves_thumbnails_and_streams() {
    for name in ["demo.conf", "minimal.conf"] {
        let s = ExampleServer::start(name);
        let (ok, jpg) = curl(&["-sf", &s.url("/thumb/rose.jpg?size=120x80")]);
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
            let (_, out) = curl(&["-s", "-o", "/dev/null", "-w", "%{http_code}", &s.url(path)]);
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
            let (ok, png) = curl(&["-sf", &s.url("/png/logo.jpg")]);
            assert!(ok);
            assert!(identify(&png).starts_with("PNG "), "PNG conversion");
            for path in ["/stream?bytes=50000000", "/stream-buffered?bytes=50000000"] {
                let (ok, out) = curl(&[
                    "-sf",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{size_download}",
                    &s.url(path),
                ]);
                assert!(ok);
                assert_eq!(String::from_utf8(out).unwrap(), "50000000", "{path}");
            }
            let (ok, out) = curl(&["-sf", &s.url("/vmstat")]);
            assert!(ok);
            assert_eq!(
                String::from_utf8(out).unwrap().lines().count(),
                7,
                "vmstat: 2 header lines, 5 samples"
            );
        }
        s.stop();
    }
}
