//! Start-up configuration checks (one clear line naming the variable) and request ids.

use std::process::{Command, Stdio};

use crate::helpers::spawn_app;

/// Runs `gatehouse serve` with `env` on a throwaway database; returns (success, stderr).
fn serve_with(env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    command
        .arg("serve")
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GATEHOUSE_BIND", "127.0.0.1:0")
        .env("SXDM_BIND", "off")
        .env(
            "DATABASE_URL",
            format!("sqlite://{}/g.db?mode=rwc", dir.path().display()),
        )
        .env("GATEHOUSE_API_TOKEN", "t")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let child = command.spawn().unwrap();
    // A good configuration would serve forever: every case here must stop on its own, quickly.
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[actix_rt::test]
async fn serve_stops_with_a_line_naming_the_bad_variable() {
    let occupied = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let occupied = occupied.local_addr().unwrap().to_string();
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("COMMAND_TIMEOUT", "soon")], "COMMAND_TIMEOUT"),
        (vec![("COMMAND_TIMEOUT", "0")], "COMMAND_TIMEOUT"),
        (
            vec![("DATABASE_URL", "mysql://root@localhost/x")],
            "DATABASE_URL",
        ),
        (vec![("REDIS_URL", "not a url")], "REDIS_URL"),
        (vec![("GATEHOUSE_BIND", "nowhere")], "GATEHOUSE_BIND"),
        (
            vec![("GATEHOUSE_BIND", occupied.as_str())],
            "GATEHOUSE_BIND",
        ),
        (vec![("SXDM_BIND", occupied.as_str())], "SXDM_BIND"),
        (
            vec![("TM20_REQUIRE_WHITELIST", "maybe")],
            "TM20_REQUIRE_WHITELIST",
        ),
    ];
    for (env, variable) in cases {
        let (ok, stderr) = serve_with(&env);
        assert!(!ok, "{env:?} must stop serve");
        let line = stderr
            .lines()
            .find(|l| l.contains(variable))
            .unwrap_or_else(|| panic!("{env:?}: no line names {variable}:\n{stderr}"));
        assert!(line.len() < 300, "one short line: {line}");
    }
}

#[actix_rt::test]
async fn every_answer_carries_a_request_id() {
    let app = spawn_app().await;
    let response = app.http.get(app.url("/healthz")).send().await.unwrap();
    let generated = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("a generated id")
        .to_owned();
    assert_eq!(generated.len(), 32);
    let again = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_ne!(
        again.headers().get("x-request-id").unwrap(),
        generated.as_str()
    );
    // A proxy's id is kept (errors included); a hostile one is replaced.
    let kept = app
        .http
        .get(app.url("/api/nothing-here"))
        .insert_header(("X-Request-Id", "lb-42:abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(kept.status().as_u16(), 401);
    assert_eq!(kept.headers().get("x-request-id").unwrap(), "lb-42:abc");
    let replaced = app
        .http
        .get(app.url("/healthz"))
        .insert_header(("X-Request-Id", "a b c"))
        .send()
        .await
        .unwrap();
    assert_ne!(replaced.headers().get("x-request-id").unwrap(), "a b c");
}

#[actix_rt::test]
async fn log_lines_about_a_device_carry_its_serial_number_kind_and_node() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let port = crate::helpers::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .arg("serve")
        .current_dir(dir.path())
        .env("GATEHOUSE_BIND", format!("127.0.0.1:{port}"))
        .env("SXDM_BIND", "off")
        .env_remove("REDIS_URL")
        .env("GATEHOUSE_NODE_ID", "node-logs")
        .env(
            "DATABASE_URL",
            format!("sqlite://{}/g.db?mode=rwc", dir.path().display()),
        )
        .env("GATEHOUSE_API_TOKEN", "t")
        .env("GATEHOUSE_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut terminal = None;
    for _ in 0..200 {
        if let Ok(t) =
            gatehouse::sim::tm20::SimTerminal::connect(gatehouse::sim::tm20::SimConfig::new(
                format!("ws://127.0.0.1:{port}/pub/chat"),
                "LOGSN001",
            ))
            .await
        {
            terminal = Some(t);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let terminal = terminal.expect("the node accepts a terminal");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut found = None;
    while std::time::Instant::now() < deadline && found.is_none() {
        if let Ok(line) = lines_rx.recv_timeout(std::time::Duration::from_millis(200)) {
            if line.contains("terminal registered") {
                found = Some(line);
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    drop(terminal);
    let line = found.expect("a registration log line");
    let json: serde_json::Value = serde_json::from_str(&line).unwrap();
    let span = &json["span"];
    assert_eq!(span["kind"], "tm20", "{line}");
    assert_eq!(span["sn"], "LOGSN001", "{line}");
    assert_eq!(span["node"], "node-logs", "{line}");
}

#[actix_rt::test]
async fn a_generated_token_goes_to_the_token_file_never_to_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        let port = crate::helpers::free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .arg("serve")
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("GATEHOUSE_BIND", format!("127.0.0.1:{port}"))
            .env("SXDM_BIND", "off")
            .env(
                "DATABASE_URL",
                format!("sqlite://{}/g.db?mode=rwc", dir.path().display()),
            )
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        (child, port)
    };
    let client = awc::Client::default();
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let (child, port) = start();
        let mut status = 0;
        for _ in 0..200 {
            let path = dir.path().join("gatehouse-token");
            if let Ok(token) = std::fs::read_to_string(&path) {
                if let Ok(response) = client
                    .get(format!("http://127.0.0.1:{port}/api/terminals"))
                    .bearer_auth(token.trim())
                    .send()
                    .await
                {
                    status = response.status().as_u16();
                    tokens.push(token.trim().to_owned());
                    break;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(status, 200, "the saved token opens the API");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let output = child.wait_with_output().unwrap();
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let token = tokens.last().unwrap();
        assert!(
            !log.contains(token.as_str()),
            "the token leaked into the log"
        );
        assert!(
            log.contains("token file"),
            "the log says where the token is:\n{log}"
        );
    }
    assert_eq!(
        tokens[0], tokens[1],
        "the next start reuses the saved token"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("gatehouse-token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o077, 0, "only the owner may read the token file");
}
