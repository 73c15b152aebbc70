//! Build script in the ngx/nginx-acme manner: turns what nginx-sys learned about the nginx tree into
//! cfg values, and re-exports the nginx build directory so the tests can find the nginx binary.
//!
//! `nginx-sys` must be a direct dependency for `DEP_NGINX_*` to reach this script.

use std::env;

fn main() {
    println!("cargo::rerun-if-env-changed=DEP_NGINX_FEATURES_CHECK");
    println!(
        "cargo::rustc-check-cfg=cfg(ngx_feature, values({}))",
        env::var("DEP_NGINX_FEATURES_CHECK").unwrap_or("any()".to_string())
    );
    println!("cargo::rerun-if-env-changed=DEP_NGINX_FEATURES");
    if let Ok(features) = env::var("DEP_NGINX_FEATURES") {
        for feature in features.split(',').map(str::trim) {
            println!("cargo::rustc-cfg=ngx_feature=\"{feature}\"");
        }
    }

    println!("cargo::rerun-if-env-changed=DEP_NGINX_OS_CHECK");
    println!(
        "cargo::rustc-check-cfg=cfg(ngx_os, values({}))",
        env::var("DEP_NGINX_OS_CHECK").unwrap_or("any()".to_string())
    );
    println!("cargo::rerun-if-env-changed=DEP_NGINX_OS");
    if let Ok(os) = env::var("DEP_NGINX_OS") {
        println!("cargo::rustc-cfg=ngx_os=\"{os}\"");
    }

    // The tests start the nginx binary of the tree the module was built against.
    println!("cargo::rerun-if-env-changed=DEP_NGINX_BUILD_DIR");
    if let Ok(dir) = env::var("DEP_NGINX_BUILD_DIR") {
        println!("cargo::rustc-env=TRANSFORM_NGINX_BUILD_DIR={dir}");
    }
    // The default transform_temp_path, as nginx's configure takes --http-proxy-temp-path: relative
    // to nginx's prefix unless absolute (Debian's package: /var/lib/nginx/transform).
    println!("cargo::rerun-if-env-changed=TRANSFORM_TEMP_PATH");
    let temp = env::var("TRANSFORM_TEMP_PATH").unwrap_or_else(|_| "transform_temp".to_string());
    println!("cargo::rustc-env=TRANSFORM_TEMP_PATH_DEFAULT={temp}");

    println!("cargo::rerun-if-env-changed=DEP_NGINX_VERSION_NUMBER");
    // Version checks in ngx's manner (it has nginx1_21_1, nginx1_25_1): nginx 1.23.0 chained
    // repeated header lines through `next` where 1.22 (Debian 12) keeps arrays of pointers.
    println!("cargo::rustc-check-cfg=cfg(nginx1_23_0)");
    if let Ok(v) = env::var("DEP_NGINX_VERSION_NUMBER") {
        println!("cargo::rustc-env=TRANSFORM_NGINX_VERSION_NUMBER={v}");
        if v.parse::<u64>().is_ok_and(|v| v >= 1_023_000) {
            println!("cargo::rustc-cfg=nginx1_23_0");
        }
    }
}
