//! The Debian package that `ci/package` builds, installed into the system's nginx (Debian 12's
//! 1.22.1): what it holds and depends on, that dpkg enables it as Debian's own module packages
//! are enabled, that the system nginx serves the ImageMagick recipe with it, that removing it
//! leaves no module file behind; and what nginx says of a module built for another nginx.
//!
//! They install and remove a package on the machine, so plain `cargo test` skips them (ignored,
//! with the reason); `ci/test` runs them as root after `ci/package`, with `TRANSFORM_TEST_DEB`
//! naming the .deb: `cargo test --test package -- --ignored --test-threads=1`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const PACKAGE: &str = "libnginx-mod-http-transform";
const SYSTEM_NGINX: &str = "/usr/sbin/nginx";
const SO: &str = "/usr/lib/nginx/modules/ngx_http_transform_module.so";
const AVAILABLE: &str = "/usr/share/nginx/modules-available/mod-http-transform.conf";
const ENABLED: &str = "/etc/nginx/modules-enabled/50-mod-http-transform.conf";
const DOC: &str = "/usr/share/doc/libnginx-mod-http-transform";
/// The package's default transform_temp_path (beside Debian's nginx's own temporary files).
const TEMP: &str = "/var/lib/nginx/transform";

/// The .deb to test, from `TRANSFORM_TEST_DEB` (ci/test sets it to what ci/package printed).
fn deb() -> PathBuf {
    let deb = std::env::var_os("TRANSFORM_TEST_DEB").unwrap_or_else(|| {
        panic!("TRANSFORM_TEST_DEB is not set: build the package with ci/package and name it")
    });
    let deb = PathBuf::from(deb);
    assert!(deb.is_file(), "no package at {}", deb.display());
    deb
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

/// Runs a command that must succeed; returns its stdout and stderr, one text.
fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?} failed: {text}");
    text
}

fn installed() -> bool {
    let out = run("dpkg-query", &["-W", "-f=${Status}", PACKAGE]);
    String::from_utf8_lossy(&out.stdout).contains("install ok installed")
}

/// Paths on the system that carry the module's name, where a module package puts files or nginx
/// makes the module's directories (its prefix, /usr/share/nginx; /var/lib/nginx).
fn traces() -> Vec<PathBuf> {
    let mut found = Vec::new();
    for dir in [
        "/usr/lib/nginx/modules",
        "/usr/share/nginx/modules-available",
        "/etc/nginx/modules-enabled",
        "/usr/share/doc",
        "/usr/share/nginx",
        "/var/lib/nginx",
    ] {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().contains("transform") {
                found.push(entry.path());
            }
        }
    }
    found
}

/// nginx's version number (1022001 for 1.22.1) of a binary, from `nginx -v`.
fn version_number(nginx: &Path) -> u64 {
    let out = Command::new(nginx).arg("-v").output().expect("nginx -v");
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    let v = said
        .trim()
        .rsplit('/')
        .next()
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or_else(|| panic!("nginx -v said {said:?}"));
    let n: Vec<u64> = v.split('.').map(|p| p.parse().unwrap()).collect();
    n[0] * 1_000_000 + n[1] * 1_000 + n[2]
}

/// Purges the package when a test that installed it ends, failed or not (a copy installed before
/// the test is purged at its start, with a line saying so).
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        if installed() || !traces().is_empty() {
            let _ = run("apt-get", &["purge", "-y", "-q", PACKAGE]);
        }
    }
}

/// The system nginx, started on a configuration of ours in the foreground.
struct SystemNginx {
    master: Child,
    prefix: PathBuf,
}

impl SystemNginx {
    fn start(conf: &Path, prefix: &Path, port: u16) -> SystemNginx {
        let stderr = prefix.join("logs/stderr.log");
        let mut master = Command::new(SYSTEM_NGINX)
            .arg("-c")
            .arg(conf)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start the system nginx");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if matches!(master.try_wait(), Ok(Some(_))) || Instant::now() > deadline {
                // SAFETY: signalling our own child.
                unsafe { libc::kill(master.id() as i32, libc::SIGTERM) };
                let _ = master.wait();
                panic!(
                    "the system nginx did not start: {}{}",
                    std::fs::read_to_string(&stderr).unwrap_or_default(),
                    std::fs::read_to_string(prefix.join("logs/error.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        SystemNginx {
            master,
            prefix: prefix.to_owned(),
        }
    }

    /// Graceful stop; returns the error log.
    fn stop(mut self) -> String {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.master.id() as i32, libc::SIGQUIT) };
        let status = self.master.wait().unwrap();
        assert!(status.success(), "the system nginx ended with {status}");
        std::fs::read_to_string(self.prefix.join("logs/error.log")).unwrap_or_default()
    }
}

impl Drop for SystemNginx {
    fn drop(&mut self) {
        if let Ok(None) = self.master.try_wait() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(self.master.id() as i32, libc::SIGTERM) };
            let _ = self.master.wait();
        }
    }
}

/// nginx-conf/imagemagick.conf for the system nginx: the module loaded the way the package
/// enables it (`include /etc/nginx/modules-enabled/*.conf`, as Debian's nginx.conf does, so
/// its `load_module modules/...` resolves under nginx's own prefix), files (logs, cache,
/// documents, temporary files) under `prefix`, free ports.
fn imagemagick_recipe(prefix: &Path, port: u16, backend: u16) -> String {
    let src = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("nginx-conf/imagemagick.conf"),
    )
    .unwrap();
    let p = prefix.display();
    let mut conf = src;
    for (from, to) in [
        (
            "load_module modules/ngx_http_transform_module.so;".to_string(),
            "include /etc/nginx/modules-enabled/*.conf;".to_string(),
        ),
        ("logs/".into(), format!("{p}/logs/")),
        (
            "proxy_cache_path cache ".into(),
            format!("proxy_cache_path {p}/cache "),
        ),
        ("root html;".into(), format!("root {p}/html;")),
        // nginx's temporary files under the prefix too: nginx, run by root, would otherwise chown
        // the system's /var/lib/nginx/* to its default user (nobody). The module's own stay at
        // the package's default, /var/lib/nginx/transform, which the test checks.
        (
            "http {\n".into(),
            format!(
                "http {{\n    client_body_temp_path {p}/client_body; proxy_temp_path {p}/proxy;\n    \
                 fastcgi_temp_path {p}/fastcgi; uwsgi_temp_path {p}/uwsgi; scgi_temp_path {p}/scgi;\n"
            ),
        ),
        ("127.0.0.1:8080".into(), format!("127.0.0.1:{port}")),
        ("127.0.0.1:8081".into(), format!("127.0.0.1:{backend}")),
    ] {
        assert!(conf.contains(&from), "imagemagick.conf has no {from:?}");
        conf = conf.replace(&from, &to);
    }
    conf
}

#[test]
#[ignore = "installs a package into the system's nginx: ci/test runs it as root after ci/package"]
fn package_installs_serves_and_removes() {
    let deb = deb();
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "dpkg -i needs root");
    if installed() || !traces().is_empty() {
        eprintln!(
            "a previous run left {PACKAGE} behind ({:?}): purging it first",
            traces()
        );
        ok("apt-get", &["purge", "-y", "-q", PACKAGE]);
    }

    // What the package is: its name, version and the nginx ABI it needs, which must be the one
    // the system's nginx provides.
    let deb_s = deb.to_str().unwrap();
    let fields = ok("dpkg-deb", &["--field", deb_s, "Package", "Depends"]);
    eprintln!("{fields}");
    assert!(fields.contains(&format!("Package: {PACKAGE}")), "{fields}");
    let provides = ok("dpkg-query", &["-W", "-f=${Provides}", "nginx"]);
    let abi = provides
        .split(',')
        .map(str::trim)
        .find(|p| p.starts_with("nginx-abi-"))
        .unwrap_or_else(|| panic!("the nginx package provides no nginx-abi: {provides}"));
    assert!(
        fields
            .lines()
            .any(|l| l.starts_with("Depends:") && l.contains(abi)),
        "the package does not depend on {abi}: {fields}"
    );
    let contents = ok("dpkg-deb", &["--contents", deb_s]);
    for path in [SO, AVAILABLE, &format!("{DOC}/README.md.gz")] {
        assert!(
            contents.contains(&format!(".{path}\n")),
            "{path} missing from the package:\n{contents}"
        );
    }
    assert!(
        contents.contains(&format!(".{DOC}/examples/nginx-conf/imagemagick.conf")),
        "{contents}"
    );

    // Installed, it is enabled as Debian's module packages are: the load file in
    // modules-available, a symlink to it in modules-enabled (made by the maintainer script).
    let _cleanup = Installed;
    eprintln!("{}", ok("dpkg", &["-i", deb_s]));
    assert!(installed());
    assert!(Path::new(SO).is_file());
    assert_eq!(
        std::fs::read_to_string(AVAILABLE).unwrap(),
        "load_module modules/ngx_http_transform_module.so;\n"
    );
    assert_eq!(std::fs::read_link(ENABLED).unwrap(), Path::new(AVAILABLE));
    let test = ok(SYSTEM_NGINX, &["-t"]);
    eprintln!("{test}");
    assert!(test.contains("test is successful"), "{test}");

    // The system nginx serves the ImageMagick recipe with the module so loaded.
    let prefix = example_prefix();
    let (port, backend) = (free_port(), free_port());
    let conf = prefix.join("imagemagick.conf");
    std::fs::write(&conf, imagemagick_recipe(&prefix, port, backend)).unwrap();
    let nginx = SystemNginx::start(&conf, &prefix, port);
    let mut client = Client::connect(port);
    let resp = client.get("/thumb/rose.jpg?size=300x200");
    assert_eq!(resp.status, 200, "{:?}", resp.headers);
    assert_eq!(resp.header("Content-Type"), Some("image/jpeg"));
    let server = resp.header("Server").unwrap_or_default().to_string();
    eprintln!(
        "GET /thumb/rose.jpg?size=300x200: {} bytes of {:?} from {server}",
        resp.body.len(),
        resp.header("Content-Type")
    );
    assert_eq!(
        server,
        format!("nginx/{}", {
            let v = version_number(Path::new(SYSTEM_NGINX));
            format!("{}.{}.{}", v / 1_000_000, v / 1_000 % 1_000, v % 1_000)
        })
    );
    let out = Command::new("identify")
        .args(["-format", "%m %w %h", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(&resp.body)?;
            child.wait_with_output()
        })
        .expect("identify (ImageMagick)");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.starts_with("JPEG "), "identify said {said:?}");
    let dims: Vec<u32> = said
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    assert!(
        dims[0] <= 300 && dims[1] <= 200 && (dims[0] == 300 || dims[1] == 200),
        "{said}"
    );
    drop(client);
    // nginx made the module's temporary directory where the package's build put it, not under
    // its prefix (/usr/share/nginx).
    assert!(Path::new(TEMP).is_dir(), "{TEMP} not made");
    assert!(!Path::new("/usr/share/nginx/transform_temp").exists());
    let log = nginx.stop();
    assert!(
        !log.contains("[alert]") && !log.contains("[crit]") && !log.contains("[emerg]"),
        "{log}"
    );
    std::fs::remove_dir_all(&prefix).ok();

    // Removed, no module file is left: the .so and the load file go; the prerm script renames
    // the symlink to *.removed (Debian keeps the admin's choice for a reinstall), which
    // modules-enabled/*.conf no longer matches, so nginx starts without the module.
    eprintln!("{}", ok("apt-get", &["remove", "-y", "-q", PACKAGE]));
    assert!(!Path::new(SO).exists(), "{SO} left behind");
    assert!(!Path::new(AVAILABLE).exists(), "{AVAILABLE} left behind");
    assert!(
        std::fs::symlink_metadata(ENABLED).is_err(),
        "{ENABLED} left"
    );
    let removed = format!("{ENABLED}.removed");
    assert_eq!(
        std::fs::read_link(&removed).ok().as_deref(),
        Some(Path::new(AVAILABLE)),
        "prerm did not rename the symlink to {removed}"
    );
    let test = ok(SYSTEM_NGINX, &["-t"]);
    assert!(test.contains("test is successful"), "{test}");
    // Purged, nothing of it is left at all (the postrm removes the temporary directory).
    ok("apt-get", &["purge", "-y", "-q", PACKAGE]);
    assert!(!installed());
    assert_eq!(traces(), Vec::<PathBuf>::new());
}

/// `nginx -t` with a configuration that loads `module`; returns (exit code, what it said).
fn load_into(nginx: &Path, module: &Path) -> (Option<i32>, String, PathBuf) {
    let prefix = temp_dir("abi");
    let conf = prefix.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "load_module {};\nerror_log {}/logs/error.log;\nevents {{}}\n",
            module.display(),
            prefix.display()
        ),
    )
    .unwrap();
    let out = Command::new(nginx)
        .arg("-t")
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!(
        "{} -t, loading {}:\n{said}",
        nginx.display(),
        module.display()
    );
    std::fs::remove_dir_all(&prefix).ok();
    (out.status.code(), said, conf)
}

#[test]
#[ignore = "needs the package and the system's nginx: ci/test runs it as root after ci/package"]
fn a_module_for_another_nginx_is_refused_by_nginx_t() {
    let deb = deb();
    let dir = temp_dir("deb");
    ok(
        "dpkg-deb",
        &["-x", deb.to_str().unwrap(), dir.to_str().unwrap()],
    );
    let packaged = dir.join(SO.trim_start_matches('/'));
    let (system, vendored) = (Path::new(SYSTEM_NGINX), nginx_binary());
    let (debian_v, vendored_v) = (version_number(system), version_number(&vendored));
    assert_ne!(debian_v, vendored_v, "the test needs two nginx versions");

    // The module as the tests build it, for the vendored nginx, into Debian's nginx: refused by
    // nginx's version check, with the file and line of load_module; nginx exits 1, no crash.
    let (code, said, conf) = load_into(system, &module_path());
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains(&format!(
            "module \"{}\" version {vendored_v} instead of {debian_v} in {}:1",
            module_path().display(),
            conf.display()
        )),
        "{said}"
    );
    // The packaged module into the vendored nginx: the same, the other way round.
    let (code, said, conf) = load_into(&vendored, &packaged);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains(&format!(
            "module \"{}\" version {debian_v} instead of {vendored_v} in {}:1",
            packaged.display(),
            conf.display()
        )),
        "{said}"
    );
    // The packaged module loads into the nginx it was built for.
    let (code, said, _) = load_into(system, &packaged);
    assert_eq!(code, Some(0), "{said}");

    // Same version, another build signature (the configure options that change nginx's
    // structures, e.g. a tree configured without --with-compat): nginx's signature check
    // refuses it. The packaged module with one flag of its signature string flipped stands for
    // such a build.
    let bytes = std::fs::read(&packaged).unwrap();
    let signature = signature_of(system);
    let at: Vec<usize> = bytes
        .windows(signature.len())
        .enumerate()
        .filter(|(_, w)| *w == signature.as_bytes())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "the packaged module holds its signature once");
    let mut other = bytes.clone();
    let last = at[0] + signature.len() - 1;
    other[last] = if other[last] == b'1' { b'0' } else { b'1' };
    let flipped = dir.join("other-signature.so");
    std::fs::write(&flipped, other).unwrap();
    let (code, said, conf) = load_into(system, &flipped);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains(&format!(
            "module \"{}\" is not binary compatible in {}:1",
            flipped.display(),
            conf.display()
        )),
        "{said}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// The module signature an nginx binary holds (NGX_MODULE_SIGNATURE: "8,4,8,0011...").
fn signature_of(nginx: &Path) -> String {
    let bytes = std::fs::read(nginx).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    text.split(|c: char| !(c.is_ascii_digit() || c == ','))
        .find(|s| {
            let parts: Vec<&str> = s.split(',').collect();
            parts.len() == 4
                && parts[3].len() > 20
                && parts[3].bytes().all(|b| b == b'0' || b == b'1')
        })
        .unwrap_or_else(|| panic!("no module signature in {}", nginx.display()))
        .to_string()
}
