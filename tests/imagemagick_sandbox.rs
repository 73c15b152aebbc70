//! nginx-conf/imagemagick-sandbox.conf, the hardened ImageMagick recipe, served for real with
//! examples/imagemagick/policy.xml: thumbnails work; ImageTragick-style pictures (MVG and SVG
//! referencing http:, ftp:, msl:, text:, ephemeral: and "@file") fail without reaching the network
//! or any file; and each of its layers (the sandbox: Landlock + seccomp; the policy) is shown to
//! stop what the other lets through, with ImageMagick and with a program that was taken over (the
//! test helper reading /etc/passwd, connecting, starting a shell) under the same sandbox.
//!
//! The recipe's site (/srv/www) is a temporary directory here and its policy directory
//! (/usr/local/lib/nginx-transform/imagemagick) is examples/imagemagick. When the tests run as
//! root, nginx's workers (and so the programs) run as nobody: the pictures' directory is then
//! given to nobody, so that only the sandbox, not the file's owner, keeps it read-only.

mod common;

use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// The recipe's site directory and policy directory, replaced here.
const SITE: &str = "/srv/www";
const POLICY_DIR: &str = "/usr/local/lib/nginx-transform/imagemagick";

fn recipe_text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("nginx-conf/imagemagick-sandbox.conf");
    std::fs::read_to_string(path).unwrap()
}

fn policy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/imagemagick")
}

/// The recipe with its paths moved to `site` and to examples/imagemagick.
fn recipe(site: &Path) -> String {
    let text = recipe_text();
    assert!(text.contains(SITE) && text.contains(POLICY_DIR));
    text.replace(SITE, site.to_str().unwrap())
        .replace(POLICY_DIR, policy_dir().to_str().unwrap())
}

/// Gives `path` to the workers' user (nobody when the tests run as root).
fn give_to_workers(path: &Path) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let ok = Command::new("chown")
        .arg("nobody")
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "chown nobody {}", path.display());
}

/// The site the recipe expects: html/images/rose.jpg (1200 pixels wide), html/cache/ and
/// magick-tmp/ owned by the workers' user, bin/ for stand-in programs.
fn make_site() -> PathBuf {
    let site = temp_dir("im-site");
    for dir in ["html/images", "html/cache", "magick-tmp", "bin"] {
        std::fs::create_dir_all(site.join(dir)).unwrap();
    }
    convert(
        &["rose:", "-resize", "1200x"],
        &site.join("html/images/rose.jpg"),
    );
    for dir in ["html/images", "html/cache", "magick-tmp"] {
        give_to_workers(&site.join(dir));
    }
    site
}

/// Runs ImageMagick here (not in nginx) to make a test picture.
fn convert(args: &[&str], out: &Path) {
    let ok = Command::new("/usr/bin/convert")
        .args(args)
        .arg(out)
        .env_remove("MAGICK_CONFIGURE_PATH")
        .status()
        .expect("run convert (ImageMagick; ci/test installs it)")
        .success();
    assert!(ok, "convert {args:?} {}", out.display());
}

/// Format, width and height of an image, by ImageMagick's identify.
fn identify(image: &[u8]) -> (String, u32, u32) {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new("identify")
        .args(["-format", "%m %w %h", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("identify");
    child.stdin.take().unwrap().write_all(image).ok();
    let out = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut f = out.split_whitespace();
    let format = f.next().unwrap_or_default().to_string();
    let w = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let h = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    (format, w, h)
}

/// A thumbnail fitting `w`x`h`, touching one of the sides.
#[track_caller]
fn assert_thumbnail(body: &[u8], w: u32, h: u32, what: &str) {
    let (format, tw, th) = identify(body);
    assert_eq!(format, "JPEG", "{what}: not a JPEG ({} bytes)", body.len());
    assert!(
        tw <= w && th <= h && (tw == w || th == h),
        "{what}: {tw}x{th} does not fit {w}x{h}"
    );
}

/// GET (or POST `body`): status and body.
fn request(url: &str, body: Option<&Path>) -> (u16, Vec<u8>) {
    let data = body.map(|p| format!("@{}", p.display()));
    let mut args = vec!["-s", "--max-time", "60", "-w", "\n%{http_code}"];
    if let Some(data) = &data {
        args.extend(["--data-binary", data.as_str()]);
    }
    args.push(url);
    let (_, out) = curl(&args);
    let split = out
        .iter()
        .rposition(|&b| b == b'\n')
        .expect("curl's status line");
    let code = String::from_utf8_lossy(&out[split + 1..])
        .parse()
        .unwrap_or(0);
    (code, out[..split].to_vec())
}

/// The first line of /etc/passwd: no response may contain it.
fn passwd_line() -> String {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let line = passwd.lines().next().unwrap().to_string();
    assert!(line.len() > 10, "/etc/passwd: {line:?}");
    line
}

#[track_caller]
fn assert_no_passwd(body: &[u8], what: &str) {
    let line = passwd_line();
    assert!(
        !String::from_utf8_lossy(body).contains(&line),
        "{what}: the response holds /etc/passwd"
    );
}

/// A TCP port that counts the connections made to it (accepted and closed at once).
struct Listener {
    port: u16,
    count: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listener {
    fn start() -> Listener {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let count = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (count.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok(_) => {
                        c.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
        });
        Listener {
            port,
            count,
            stop,
            thread: Some(thread),
        }
    }

    /// Connections so far (a connection made before a response ended is counted by then: the
    /// kernel completed it; the accept loop takes a moment).
    fn connections(&self) -> usize {
        std::thread::sleep(Duration::from_millis(100));
        self.count.load(Ordering::SeqCst)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
    }
}

/// `text` without the statement of `directive` (from its line to the line with its `;`),
/// replaced by `with`.
fn replace_statement(text: &str, directive: &str, with: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines();
    let mut found = false;
    while let Some(line) = lines.next() {
        let code = line.split('#').next().unwrap();
        let starts = code
            .trim_start()
            .strip_prefix(directive)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace));
        if !starts {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        assert!(!found, "{directive} twice");
        found = true;
        let indent = &line[..line.len() - line.trim_start().len()];
        let mut code = code.to_string();
        while !code.contains(';') {
            code = lines.next().expect("the end of the statement").to_string();
            code.truncate(code.find('#').unwrap_or(code.len()));
        }
        if !with.is_empty() {
            out.push_str(indent);
            out.push_str(with);
            out.push('\n');
        }
    }
    assert!(found, "no {directive} in the recipe");
    out
}

/// The words of the recipe's `transform_sandbox_paths` (comments dropped).
fn recipe_sandbox_paths(text: &str) -> Vec<String> {
    let at = text
        .lines()
        .position(|l| l.trim_start().starts_with("transform_sandbox_paths"))
        .expect("transform_sandbox_paths in the recipe");
    let mut words = Vec::new();
    for line in text.lines().skip(at) {
        let code = line.split('#').next().unwrap();
        let end = code.contains(';');
        words.extend(
            code.split(|c: char| c.is_whitespace() || c == ';')
                .filter(|w| !w.is_empty())
                .map(String::from),
        );
        if end {
            break;
        }
    }
    assert_eq!(words[0], "transform_sandbox_paths");
    words.remove(0);
    words
}

/// The recipe's `transform_env` lines (one line each).
fn recipe_env(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("transform_env "))
        .map(String::from)
        .collect()
}

/// `text` with `locations` added to its (only) server.
fn with_locations(text: &str, locations: &str) -> String {
    let end = text.rfind("    }\n}").expect("the end of the server block");
    format!("{}{locations}\n{}", &text[..end], &text[end..])
}

/// The recipe with its layers on or off: `sandbox` (transform_sandbox_paths and
/// transform_sandbox_syscalls default, or both explicitly off) and `policy` (the
/// MAGICK_CONFIGURE_PATH that selects examples/imagemagick/policy.xml, or not).
fn layered(site: &Path, sandbox: bool, policy: bool) -> String {
    let mut text = recipe(site);
    if !sandbox {
        // Said explicitly, so that a run with the sandbox on globally (TRANSFORM_TEST_SANDBOX)
        // keeps this variant without one.
        text = replace_statement(
            &text,
            "transform_sandbox_paths",
            "transform_sandbox_paths off;",
        );
        text = replace_statement(
            &text,
            "transform_sandbox_syscalls",
            "transform_sandbox_syscalls none;",
        );
    }
    if !policy {
        let env = recipe_env(&text);
        let line = env
            .iter()
            .find(|l| l.contains("MAGICK_CONFIGURE_PATH"))
            .expect("MAGICK_CONFIGURE_PATH in the recipe");
        text = text.replace(&format!("{line}\n"), "");
    }
    text
}

fn label(sandbox: bool, policy: bool) -> &'static str {
    match (sandbox, policy) {
        (false, false) => "neither",
        (false, true) => "policy only",
        (true, false) => "sandbox only",
        (true, true) => "sandbox + policy",
    }
}

/// The recipe as shipped: a thumbnail from a file (stored, then served from the store) and one
/// from an upload work; ImageTragick-style pictures, as files in the pictures' directory (whose
/// format ImageMagick guesses from their content) and as uploads, all fail (502) without a
/// connection to the port they name, without /etc/passwd in any response, and without a file
/// changed, made or removed in the pictures' directory.
#[test]
fn the_hardened_recipe_makes_thumbnails_and_refuses_crafted_pictures() {
    let site = make_site();
    let images = site.join("html/images");
    let listener = Listener::start();
    let port = listener.port;
    let victim = std::fs::read(images.join("rose.jpg")).unwrap();
    std::fs::write(images.join("victim.jpg"), &victim).unwrap();
    let evil_msl = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<image>\n  <read filename=\"{img}/rose.jpg\"/>\n  \
         <write filename=\"{img}/pwned-msl.jpg\"/>\n</image>\n",
        img = images.display()
    );
    std::fs::write(images.join("evil.msl"), evil_msl).unwrap();
    let mvg = |body: &str| {
        format!("push graphic-context\nviewbox 0 0 64 64\n{body}\npop graphic-context\n")
    };
    let svg = |body: &str| {
        format!(
            "<?xml version=\"1.0\" standalone=\"no\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" \
             xmlns:xlink=\"http://www.w3.org/1999/xlink\" width=\"64\" height=\"64\">\n{body}\n</svg>\n"
        )
    };
    let img = images.display();
    let crafted: Vec<(&str, String)> = vec![
        (
            "mvg-url",
            mvg(&format!(
                "fill 'url(http://127.0.0.1:{port}/mvg-fill.jpg)'\nrectangle 0,0 64,64\n\
                 image over 0,0 64,64 'http://127.0.0.1:{port}/mvg-image.jpg'"
            )),
        ),
        (
            "mvg-ftp",
            mvg(&format!("image over 0,0 64,64 'ftp://127.0.0.1:{port}/mvg.jpg'")),
        ),
        (
            "mvg-https",
            mvg(&format!("image over 0,0 64,64 'https://127.0.0.1:{port}/mvg.jpg'")),
        ),
        (
            "svg-url",
            svg(&format!(
                "<image x=\"0\" y=\"0\" width=\"64\" height=\"64\" \
                 xlink:href=\"http://127.0.0.1:{port}/svg.jpg\"/>\n\
                 <image x=\"0\" y=\"0\" width=\"64\" height=\"64\" \
                 xlink:href=\"ftp://127.0.0.1:{port}/svg.jpg\"/>"
            )),
        ),
        (
            "mvg-msl",
            mvg(&format!("image over 0,0 64,64 'msl:{img}/evil.msl'")),
        ),
        (
            "mvg-text",
            mvg("image over 0,0 64,64 'text:/etc/passwd'"),
        ),
        (
            "mvg-label",
            mvg("image over 0,0 64,64 'label:@/etc/passwd'\ntext 0,0 '@/etc/passwd'"),
        ),
        (
            "svg-text",
            svg("<image x=\"0\" y=\"0\" width=\"64\" height=\"64\" xlink:href=\"text:/etc/passwd\"/>\n\
                 <text x=\"0\" y=\"10\">@/etc/passwd</text>"),
        ),
        (
            "mvg-ephemeral",
            mvg(&format!("image over 0,0 64,64 'ephemeral:{img}/victim.jpg'")),
        ),
    ];
    for (name, content) in &crafted {
        std::fs::write(images.join(format!("{name}.jpg")), content).unwrap();
    }
    let listing = |dir: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let before = listing(&images);

    let s = ExampleServer::start_text("imagemagick-sandbox.conf", &recipe(&site));
    // A thumbnail of a file, made once: the second request is the stored file.
    let (code, jpg) = request(&s.url("/thumb/200x150/rose.jpg"), None);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&jpg));
    assert_thumbnail(&jpg, 200, 150, "GET /thumb/200x150/rose.jpg");
    let stored = site.join("html/cache/thumb/200x150/rose.jpg");
    assert_eq!(std::fs::read(&stored).unwrap(), jpg, "the stored thumbnail");
    let (code, again) = request(&s.url("/thumb/200x150/rose.jpg"), None);
    assert_eq!((code, again == jpg), (200, true), "the stored file again");
    // A thumbnail of an upload.
    let (code, jpg) = request(&s.url("/resize?size=64x64"), Some(&images.join("rose.jpg")));
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&jpg));
    assert_thumbnail(&jpg, 64, 64, "POST /resize?size=64x64");
    // The validation in front of it all.
    assert_eq!(request(&s.url("/thumb/-write/rose.jpg"), None).0, 404);
    assert_eq!(request(&s.url("/thumb/10x10/none.jpg"), None).0, 404);
    assert_eq!(request(&s.url("/resize?size=huge"), Some(&stored)).0, 400);

    // The crafted pictures, as files of the pictures' directory and as uploads.
    let upload = site.join("upload");
    for (name, content) in &crafted {
        let (code, body) = request(&s.url(&format!("/thumb/64x64/{name}.jpg")), None);
        assert_eq!(
            code,
            502,
            "GET {name}.jpg: {}",
            String::from_utf8_lossy(&body)
        );
        assert_no_passwd(&body, name);
        std::fs::write(&upload, content).unwrap();
        let (code, body) = request(&s.url("/resize?size=64x64"), Some(&upload));
        assert_eq!(code, 502, "POST {name}: {}", String::from_utf8_lossy(&body));
        assert_no_passwd(&body, name);
    }
    assert_eq!(
        listener.connections(),
        0,
        "a crafted picture reached the test's port"
    );
    assert_eq!(listing(&images), before, "the pictures' directory changed");
    assert_eq!(
        std::fs::read(images.join("victim.jpg")).unwrap(),
        victim,
        "ephemeral: the victim changed"
    );
    // Nothing is stored for a failed thumbnail.
    for (name, _) in &crafted {
        assert!(!site
            .join(format!("html/cache/thumb/64x64/{name}.jpg"))
            .exists());
    }
    let errors = std::fs::read_to_string(s.prefix.join("logs/error.log")).unwrap();
    assert!(
        errors.contains("transform_sandbox_paths: Landlock ABI"),
        "the Landlock notice: {errors}"
    );
    s.stop();
    std::fs::remove_dir_all(&site).ok();
}

/// What each layer stops that the other lets through, with ImageMagick itself: the recipe served
/// four times, with neither layer, the policy only, the sandbox (Landlock + seccomp) only, and
/// both, plus locations that run the recipe's convert on what an ImageMagick that follows a
/// picture's references would open (this Debian build refuses coders named inside a picture,
/// "ExplicitCoderNotAllowed", so the test names them as convert's input):
/// - `ftp://127.0.0.1:PORT/...`: Debian's own policy.xml refuses http: and https:, not ftp:; with
///   neither layer a connection arrives; the policy refuses the coder, seccomp the socket;
/// - an SVG picture: ImageMagick hands it to an external program, its rsvg-convert delegate,
///   found in PATH; a stand-in that connects to the test's port shows whether it ran: it does
///   with neither layer; the policy refuses delegates, Landlock the execve;
/// - a picture 10001 pixels wide (a pixel flood's shape): the policy's width limit refuses it,
///   Debian's (16000) does not; the sandbox does not limit sizes;
/// - text:/etc/passwd, label:@/etc/passwd, msl: (a script that writes into the pictures'
///   directory) and ephemeral: (which deletes what it read) fail with either layer on (this
///   build also refuses or crashes on them with neither: reported, not asserted).
///
/// A normal thumbnail works in all four. The table is printed (`--nocapture`).
#[test]
fn each_layer_of_the_recipe_stops_what_the_other_lets_through() {
    let site = make_site();
    let images = site.join("html/images");
    convert(&["-size", "10001x16", "xc:gray"], &images.join("wide.png"));
    let svg = "<?xml version=\"1.0\" standalone=\"no\"?>\n\
               <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"64\" height=\"64\">\n\
               <rect width=\"64\" height=\"64\" fill=\"red\"/>\n</svg>\n";
    std::fs::write(images.join("drawing.jpg"), svg).unwrap();
    let victim = std::fs::read(images.join("rose.jpg")).unwrap();
    std::fs::write(images.join("victim.jpg"), &victim).unwrap();
    let pwned = images.join("pwned-msl.jpg");
    std::fs::write(
        images.join("evil.msl"),
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<image>\n  <read filename=\"{}\"/>\n  \
             <write filename=\"{}\"/>\n</image>\n",
            images.join("rose.jpg").display(),
            pwned.display()
        ),
    )
    .unwrap();
    let ftp = Listener::start();
    let delegate = Listener::start();
    // The stand-in delegate: tells the test's port it ran.
    let stand_in = site.join("bin/rsvg-convert");
    std::fs::write(
        &stand_in,
        format!(
            "#!/bin/bash\necho ran > /dev/tcp/127.0.0.1/{}\nexit 1\n",
            delegate.port
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &stand_in,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();

    let img = images.display();
    let convert_of = |input: &str| {
        format!("transform_exec /usr/bin/convert {input} -thumbnail 64x64 jpg:-; transform_type image/jpeg;")
    };
    let probes: Vec<(&str, String)> = vec![
        ("thumbnail", convert_of(&format!("{img}/rose.jpg"))),
        (
            "ftp:",
            convert_of(&format!("ftp://127.0.0.1:{}/probe.jpg", ftp.port)),
        ),
        ("svg delegate", convert_of(&format!("{img}/drawing.jpg"))),
        ("10001 px wide", convert_of(&format!("{img}/wide.png"))),
        ("text:/etc/passwd", convert_of("text:/etc/passwd")),
        ("label:@/etc/passwd", convert_of("label:@/etc/passwd")),
        ("msl:", convert_of(&format!("msl:{img}/evil.msl"))),
        (
            "ephemeral:",
            convert_of(&format!("ephemeral:{img}/victim.jpg")),
        ),
    ];
    let path_of = |i: usize| format!("/probe/{i}");

    let mut table = Vec::new();
    for (sandbox, policy) in [(false, false), (false, true), (true, false), (true, true)] {
        let variant = label(sandbox, policy);
        let text = layered(&site, sandbox, policy);
        let mut env = recipe_env(&text);
        env.push(format!(
            "transform_env PATH {}:/usr/local/bin:/usr/bin:/bin;",
            site.join("bin").display()
        ));
        let mut locations = String::new();
        for (i, (name, exec)) in probes.iter().enumerate() {
            // The stand-in delegate is found through PATH (a location's transform_env replaces
            // the server's: all of them again).
            let env = if *name == "svg delegate" {
                env.join(" ")
            } else {
                String::new()
            };
            locations.push_str(&format!(
                "        location = {} {{ {env} {exec} }}\n",
                path_of(i)
            ));
        }
        let s = ExampleServer::start_text(
            "imagemagick-sandbox.conf",
            &with_locations(&text, &locations),
        );
        let (before_ftp, before_delegate) = (ftp.connections(), delegate.connections());
        let mut row = vec![variant.to_string()];
        for (i, (name, _)) in probes.iter().enumerate() {
            let (code, body) = request(&s.url(&path_of(i)), None);
            assert_no_passwd(&body, &format!("{variant}: {name}"));
            let mut cell = code.to_string();
            match *name {
                "thumbnail" => {
                    assert_eq!(code, 200, "{variant}: {}", String::from_utf8_lossy(&body));
                    assert_thumbnail(&body, 64, 64, variant);
                }
                "ftp:" => {
                    let reached = ftp.connections() - before_ftp;
                    if reached > 0 {
                        cell.push_str(", connected");
                    }
                    assert_eq!(
                        reached > 0,
                        !sandbox && !policy,
                        "{variant}: ftp: made {reached} connections"
                    );
                }
                "svg delegate" => {
                    let ran = delegate.connections() - before_delegate;
                    if ran > 0 {
                        cell.push_str(", delegate ran");
                    }
                    assert_eq!(
                        ran > 0,
                        !sandbox && !policy,
                        "{variant}: the delegate ran {ran} times"
                    );
                }
                "10001 px wide" => {
                    assert_eq!(code, if policy { 502 } else { 200 }, "{variant}: {name}");
                }
                _ => {
                    let deleted = !images.join("victim.jpg").exists();
                    let written = pwned.exists();
                    if deleted {
                        cell.push_str(", victim deleted");
                    }
                    if written {
                        cell.push_str(", file written");
                    }
                    if sandbox || policy {
                        assert_ne!(code, 200, "{variant}: {name}");
                        assert!(!deleted && !written, "{variant}: {name}: {cell}");
                    }
                    if deleted {
                        std::fs::write(images.join("victim.jpg"), &victim).unwrap();
                    }
                    std::fs::remove_file(&pwned).ok();
                }
            }
            row.push(cell);
        }
        s.stop();
        table.push(row);
    }
    let mut out = format!(
        "| {} |\n|{}\n",
        ["layers"]
            .into_iter()
            .chain(probes.iter().map(|(n, _)| *n))
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(probes.len() + 1)
    );
    for row in table {
        out.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    eprintln!("ImageMagick under the recipe's layers (HTTP status, and what happened):\n{out}");
    std::fs::remove_dir_all(&site).ok();
}

/// A program that was taken over (ImageMagick running an attacker's code, the test helper here)
/// under the recipe's sandbox, with the helper's own file added to the paths, against no
/// sandbox: what it stops (reading /etc/passwd, a TCP connection to the test's port, starting a
/// shell, writing into the pictures' directory, signalling the nginx worker) and what it does not
/// (reading the pictures, writing ImageMagick's temporary directory, AF_UNIX sockets). The policy
/// plays no part: it is ImageMagick's, not the program's.
#[test]
fn the_recipe_sandbox_confines_a_program_that_was_taken_over() {
    let site = make_site();
    let images = site.join("html/images");
    let listener = Listener::start();
    let passwd_len = std::fs::metadata("/etc/passwd").unwrap().len();
    let rose_len = std::fs::metadata(images.join("rose.jpg")).unwrap().len();
    let planted = images.join("planted.jpg");
    let scratch = site.join("magick-tmp/planted");
    // (probe, arguments, with the sandbox, without it)
    let connect = format!("127.0.0.1:{}", listener.port);
    let probes: Vec<(&str, Vec<String>, String, String)> = vec![
        (
            "read /etc/passwd",
            vec!["read-file".into(), "/etc/passwd".into()],
            "EACCES".into(),
            format!("ok read {passwd_len}"),
        ),
        (
            "TCP connection",
            vec!["socket-inet".into(), connect.clone()],
            "EPERM".into(),
            "ok connected".into(),
        ),
        (
            "run /bin/sh",
            vec!["exec".into(), "/bin/sh".into(), "-c".into(), "true".into()],
            "EACCES".into(),
            "ok exit 0".into(),
        ),
        (
            "write the pictures' directory",
            vec!["write-file".into(), planted.display().to_string()],
            "EACCES".into(),
            "ok wrote 3".into(),
        ),
        (
            "signal the worker",
            vec!["kill-parent".into(), "0".into()],
            "EPERM".into(),
            "ok kill".into(),
        ),
        (
            "read a picture (allowed path)",
            vec![
                "read-file".into(),
                images.join("rose.jpg").display().to_string(),
            ],
            format!("ok read {rose_len}"),
            format!("ok read {rose_len}"),
        ),
        (
            "write the temporary directory (rw= path)",
            vec!["write-file".into(), scratch.display().to_string()],
            "ok wrote 3".into(),
            "ok wrote 3".into(),
        ),
        (
            "AF_UNIX socket",
            vec!["socket-unix".into()],
            "ok unix".into(),
            "ok unix".into(),
        ),
    ];
    let mut table = Vec::new();
    for sandbox in [false, true] {
        let variant = if sandbox { "sandbox" } else { "no sandbox" };
        let text = layered(&site, sandbox, true);
        let mut locations = String::new();
        for (i, (_, args, _, _)) in probes.iter().enumerate() {
            // The recipe's paths and the helper's own file (a location's list replaces the
            // server's).
            let paths = if sandbox {
                let mut paths = recipe_sandbox_paths(&text);
                paths.push(HELPER.to_string());
                format!("transform_sandbox_paths {};", paths.join(" "))
            } else {
                String::new()
            };
            locations.push_str(&format!(
                "        location = /taken-over/{i} {{ {paths} transform_exec {HELPER} {}; }}\n",
                args.join(" ")
            ));
        }
        let s = ExampleServer::start_text(
            "imagemagick-sandbox.conf",
            &with_locations(&text, &locations),
        );
        let before = listener.connections();
        let mut row = vec![variant.to_string()];
        for (i, (name, _, with, without)) in probes.iter().enumerate() {
            let (code, body) = request(&s.url(&format!("/taken-over/{i}")), None);
            assert_no_passwd(&body, name);
            let line = String::from_utf8_lossy(&body).trim().to_string();
            assert_eq!(code, 200, "{variant}: {name}: {line}");
            let want = if sandbox { with } else { without };
            assert_eq!(&line, want, "{variant}: {name}");
            row.push(line);
        }
        let connected = listener.connections() - before;
        assert_eq!(connected, usize::from(!sandbox), "{variant}: connections");
        s.stop();
        std::fs::remove_file(&planted).ok();
        std::fs::remove_file(&scratch).ok();
        table.push(row);
    }
    let mut out = String::from("| probe | no sandbox | sandbox |\n|---|---|---|\n");
    for (i, (name, _, _, _)) in probes.iter().enumerate() {
        out.push_str(&format!(
            "| {name} | {} | {} |\n",
            table[0][i + 1],
            table[1][i + 1]
        ));
    }
    eprintln!("A taken-over program under the recipe's sandbox:\n{out}");
    std::fs::remove_dir_all(&site).ok();
}

/// The recipe with its commented `transform_cgroup` line on (root and cgroups needed: a machine
/// without them fails this test with `nginx -t`'s reason, unless TRANSFORM_TEST_NO_CGROUP=1 says
/// so aloud): nginx accepts it beside the sandbox, thumbnails still work, a crafted picture still
/// fails, and the start-up names the hierarchies it uses.
#[test]
fn the_recipe_with_its_cgroup_line_makes_thumbnails() {
    let site = make_site();
    let line = "# transform_cgroup ";
    let text = recipe(&site);
    assert!(
        text.contains(line),
        "the recipe's commented transform_cgroup line"
    );
    let text = text.replacen(line, "transform_cgroup ", 1);
    let prefix = example_prefix();
    let conf = prefix.join("imagemagick-sandbox.conf");
    std::fs::write(&conf, &text).unwrap();
    let out = Command::new(nginx_binary())
        .arg("-t")
        .arg("-p")
        .arg(&prefix)
        .arg("-e")
        .arg(prefix.join("logs/error.log"))
        .arg("-c")
        .arg(&conf)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&prefix).ok();
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            std::env::var_os("TRANSFORM_TEST_NO_CGROUP").is_some(),
            "the recipe's transform_cgroup cannot run here: {why} (set \
             TRANSFORM_TEST_NO_CGROUP=1 to run without it)"
        );
        eprintln!("skipping: {why} (TRANSFORM_TEST_NO_CGROUP is set)");
        std::fs::remove_dir_all(&site).ok();
        return;
    }
    let images = site.join("html/images");
    std::fs::write(
        images.join("crafted.jpg"),
        "push graphic-context\nviewbox 0 0 64 64\nimage over 0,0 64,64 'text:/etc/passwd'\n\
         pop graphic-context\n",
    )
    .unwrap();
    let s = ExampleServer::start_text("imagemagick-sandbox.conf", &text);
    let (code, jpg) = request(&s.url("/thumb/120x80/rose.jpg"), None);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&jpg));
    assert_thumbnail(&jpg, 120, 80, "with transform_cgroup");
    let (code, jpg) = request(&s.url("/resize?size=64x64"), Some(&images.join("rose.jpg")));
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&jpg));
    assert_thumbnail(&jpg, 64, 64, "an upload with transform_cgroup");
    let (code, body) = request(&s.url("/thumb/64x64/crafted.jpg"), None);
    assert_eq!(code, 502);
    assert_no_passwd(&body, "crafted.jpg");
    let errors = std::fs::read_to_string(s.prefix.join("logs/error.log")).unwrap();
    for controller in ["memory", "pids", "cpu"] {
        assert!(
            errors.contains(&format!("transform_cgroup: {controller} (cgroup v")),
            "the {controller} hierarchy's notice: {errors}"
        );
    }
    s.stop();
    std::fs::remove_dir_all(&site).ok();
}
