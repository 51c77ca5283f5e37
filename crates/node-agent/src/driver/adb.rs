//! Real devices through the `adb` command line.
//!
//! Each command becomes a short plan of `adb` invocations ([`plan`], pure
//! so it is tested without adb). Params read per command type:
//!
//! | command_type | params | adb |
//! |---|---|---|
//! | `WATCH_VIDEO` | `url` (http/https) or `video_id` (YouTube id); `watch_s` (optional) | `shell am start -a android.intent.action.VIEW -d <url>`, then wait `watch_s` |
//! | `RANDOM_WATCH` | as `WATCH_VIDEO`; without a target opens `https://m.youtube.com/` | same |
//! | `LIKE_VIDEO`, `SUBSCRIBE_CHANNEL` | `x`, `y` (tap point); optional `url` opened first | [`am start …`, wait 3 s,] `shell input tap x y` |
//! | `WRITE_COMMENT` | `text`; optional `x`,`y` (tap the box first) and `submit_x`,`submit_y` (tap send after) | `shell input tap`, `shell input text <text>`, `shell input tap` |
//! | `RESTART_DEVICE` | none | `reboot` |
//! | `UPDATE_PERSONA` | `settings`: `[{"namespace": "system"\|"secure"\|"global", "key", "value"}]` | `shell settings put <ns> <key> <value>` each |
//! | `SYNC_STATE` | none | `shell getprop`, returned as `{"props": {…}}` |
//!
//! Everything user-supplied that reaches the device shell is single-quoted
//! (`adb shell` joins its arguments into one `sh -c` line on the device).
//! `input text` cannot type non-ASCII text; spaces are sent as `%s`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::process::Command as Process;

use super::{DeviceDriver, DriverError};
use crate::frames::{Command, CommandType};
use crate::ids::DeviceSerial;
#[cfg(test)]
use relaymesh_wire::node::parse_wire_name;
use relaymesh_wire::node::wire_name;

/// Pause after opening a page before tapping on it.
const SETTLE: Duration = Duration::from_secs(3);
/// Page opened by `RANDOM_WATCH` without a target.
const HOME_URL: &str = "https://m.youtube.com/";
/// Longest stdout/stderr kept in a RESULT or error.
const OUTPUT_LIMIT: usize = 4096;

/// One step of a command's plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdbStep {
    /// `adb <args>`.
    Run(Vec<String>),
    /// Stay on the device (watching) for this long.
    Wait(Duration),
}

/// Drives devices with the adb executable at `path`.
#[derive(Debug, Clone)]
pub struct AdbDriver {
    path: String,
}

impl AdbDriver {
    pub fn new(path: impl Into<String>) -> Self {
        Self { path: path.into() }
    }

    /// Runs `adb <args>` and returns its stdout; the child is killed if the
    /// future is dropped (timeout), so a wedged device holds no process.
    async fn adb(&self, args: &[String]) -> Result<String, DriverError> {
        let output = Process::new(&self.path)
            .args(args)
            .kill_on_drop(true)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::NotFound {
                    DriverError::AdbMissing {
                        path: self.path.clone(),
                    }
                } else {
                    DriverError::Spawn {
                        program: self.path.clone(),
                        source,
                    }
                }
            })?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(DriverError::Exit {
                command: format!("adb {}", args.join(" ")),
                status: output.status.to_string(),
                stderr: truncate(String::from_utf8_lossy(&output.stderr).trim()),
            })
        }
    }
}

impl DeviceDriver for AdbDriver {
    async fn devices(&self) -> Result<Vec<DeviceSerial>, DriverError> {
        let out = self.adb(&["devices".to_owned()]).await?;
        Ok(parse_devices(&out))
    }

    async fn run(&self, serial: &DeviceSerial, command: &Command) -> Result<Value, DriverError> {
        let steps = plan(serial, command)?;
        let mut last = String::new();
        for step in &steps {
            match step {
                AdbStep::Run(args) => last = self.adb(args).await?,
                AdbStep::Wait(d) => tokio::time::sleep(*d).await,
            }
        }
        Ok(match command.command_type {
            CommandType::SyncState => json!({ "props": parse_getprop(&last) }),
            _ => json!({ "steps": steps.len(), "output": truncate(last.trim()) }),
        })
    }
}

fn truncate(s: &str) -> String {
    if s.len() <= OUTPUT_LIMIT {
        return s.to_owned();
    }
    let mut end = OUTPUT_LIMIT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Serials of devices in state `device` from `adb devices` output
/// (`unauthorized`, `offline` and the header are skipped).
pub fn parse_devices(out: &str) -> Vec<DeviceSerial> {
    out.lines()
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            match (cols.next(), cols.next()) {
                (Some(serial), Some("device")) => Some(DeviceSerial::from(serial)),
                _ => None,
            }
        })
        .collect()
}

/// `[key]: [value]` lines of `getprop` as a map.
pub fn parse_getprop(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|line| {
            let (k, v) = line.trim().split_once("]: [")?;
            Some((k.strip_prefix('[')?.to_owned(), v.strip_suffix(']')?.to_owned()))
        })
        .collect()
}

/// POSIX single-quoting: the device shell sees `s` as one literal word.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `input text` reads `%s` as a space and stops at a real one.
pub fn input_text_arg(text: &str) -> String {
    sh_quote(&text.replace(' ', "%s"))
}

#[derive(Debug, Deserialize)]
struct WatchParams {
    url: Option<String>,
    video_id: Option<String>,
    watch_s: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct TapParams {
    x: u32,
    y: u32,
    url: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CommentParams {
    text: String,
    x: Option<u32>,
    y: Option<u32>,
    submit_x: Option<u32>,
    submit_y: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct Setting {
    namespace: String,
    key: String,
    value: String,
}

#[derive(Debug, Deserialize)]
struct PersonaParams {
    settings: Vec<Setting>,
}

/// The adb invocations that carry out `command` on `serial`.
pub fn plan(serial: &DeviceSerial, command: &Command) -> Result<Vec<AdbStep>, DriverError> {
    let kind = &command.command_type;
    let shell = |words: Vec<String>| {
        let mut args = vec!["-s".to_owned(), serial.to_string(), "shell".to_owned()];
        args.extend(words);
        AdbStep::Run(args)
    };
    let open = |url: &str| {
        shell(vec![
            "am".into(),
            "start".into(),
            "-a".into(),
            "android.intent.action.VIEW".into(),
            "-d".into(),
            sh_quote(url),
        ])
    };
    let tap = |x: u32, y: u32| shell(vec!["input".into(), "tap".into(), x.to_string(), y.to_string()]);
    Ok(match kind {
        CommandType::WatchVideo | CommandType::RandomWatch => {
            let p: WatchParams = params(command)?;
            let url = match (p.url, p.video_id) {
                (Some(url), _) => checked_url(kind, url)?,
                (None, Some(id)) => youtube_url(kind, &id)?,
                (None, None) if *kind == CommandType::RandomWatch => HOME_URL.to_owned(),
                (None, None) => return Err(invalid(kind, "needs `url` or `video_id`")),
            };
            let mut steps = vec![open(&url)];
            if let Some(s) = p.watch_s.filter(|s| *s > 0) {
                steps.push(AdbStep::Wait(Duration::from_secs(s)));
            }
            steps
        }
        CommandType::LikeVideo | CommandType::SubscribeChannel => {
            let p: TapParams = params(command)?;
            let mut steps = Vec::new();
            if let Some(url) = p.url {
                steps.push(open(&checked_url(kind, url)?));
                steps.push(AdbStep::Wait(SETTLE));
            }
            steps.push(tap(p.x, p.y));
            steps
        }
        CommandType::WriteComment => {
            let p: CommentParams = params(command)?;
            if p.text.is_empty() || !p.text.is_ascii() {
                return Err(invalid(kind, "`text` must be non-empty ASCII (adb input text)"));
            }
            let mut steps = Vec::new();
            if let (Some(x), Some(y)) = (p.x, p.y) {
                steps.push(tap(x, y));
            }
            steps.push(shell(vec!["input".into(), "text".into(), input_text_arg(&p.text)]));
            if let (Some(x), Some(y)) = (p.submit_x, p.submit_y) {
                steps.push(tap(x, y));
            }
            steps
        }
        CommandType::RestartDevice => vec![AdbStep::Run(vec!["-s".into(), serial.to_string(), "reboot".into()])],
        CommandType::UpdatePersona => {
            let p: PersonaParams = params(command)?;
            if p.settings.is_empty() {
                return Err(invalid(kind, "`settings` is empty"));
            }
            p.settings
                .into_iter()
                .map(|s| {
                    if !matches!(s.namespace.as_str(), "system" | "secure" | "global") {
                        return Err(invalid(kind, "`namespace` must be system, secure or global"));
                    }
                    let key_ok =
                        !s.key.is_empty() && s.key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
                    if !key_ok {
                        return Err(invalid(kind, "`key` must be [A-Za-z0-9_.]+"));
                    }
                    Ok(shell(vec![
                        "settings".into(),
                        "put".into(),
                        s.namespace,
                        s.key,
                        sh_quote(&s.value),
                    ]))
                })
                .collect::<Result<_, _>>()?
        }
        CommandType::SyncState => vec![shell(vec!["getprop".into()])],
        CommandType::Unspecified => return Err(DriverError::Unsupported(wire_name(*kind).to_owned())),
    })
}

fn params<T: DeserializeOwned>(command: &Command) -> Result<T, DriverError> {
    T::deserialize(&command.params).map_err(|e| invalid(&command.command_type, &e.to_string()))
}

fn invalid(kind: &CommandType, why: &str) -> DriverError {
    DriverError::InvalidParams {
        command_type: wire_name(*kind).to_owned(),
        why: why.to_owned(),
    }
}

fn checked_url(kind: &CommandType, url: String) -> Result<String, DriverError> {
    if url.starts_with("https://") || url.starts_with("http://") {
        Ok(url)
    } else {
        Err(invalid(kind, "`url` must be http(s)"))
    }
}

fn youtube_url(kind: &CommandType, id: &str) -> Result<String, DriverError> {
    let ok = !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(format!("https://www.youtube.com/watch?v={id}"))
    } else {
        Err(invalid(kind, "`video_id` must be a YouTube id"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{CommandId, RunId};

    fn command(kind: &str, params: Value) -> Command {
        Command {
            command_id: CommandId::from("c1"),
            run_id: RunId::from("r1"),
            device_serial: DeviceSerial::from("ABC123"),
            command_type: parse_wire_name(kind).unwrap_or(CommandType::Unspecified),
            params,
            timeout_ms: None,
        }
    }

    fn plan_of(kind: &str, params: Value) -> Result<Vec<AdbStep>, DriverError> {
        plan(&DeviceSerial::from("ABC123"), &command(kind, params))
    }

    fn run(args: &[&str]) -> AdbStep {
        AdbStep::Run(args.iter().map(|s| (*s).to_owned()).collect())
    }

    #[test]
    fn watch_video_opens_the_youtube_id_and_waits() {
        assert_eq!(
            plan_of("WATCH_VIDEO", json!({"video_id": "dQw4w9WgXcQ", "watch_s": 30})).unwrap(),
            vec![
                run(&[
                    "-s",
                    "ABC123",
                    "shell",
                    "am",
                    "start",
                    "-a",
                    "android.intent.action.VIEW",
                    "-d",
                    "'https://www.youtube.com/watch?v=dQw4w9WgXcQ'"
                ]),
                AdbStep::Wait(Duration::from_secs(30)),
            ]
        );
    }

    #[test]
    fn watch_video_needs_a_target_but_random_watch_does_not() {
        assert!(matches!(
            plan_of("WATCH_VIDEO", json!({})),
            Err(DriverError::InvalidParams { .. })
        ));
        let steps = plan_of("RANDOM_WATCH", json!({})).unwrap();
        assert_eq!(steps.len(), 1);
        assert!(
            matches!(&steps[0], AdbStep::Run(a) if a.last().map(String::as_str) == Some("'https://m.youtube.com/'"))
        );
    }

    #[test]
    fn urls_and_ids_cannot_inject_shell() {
        assert!(plan_of("WATCH_VIDEO", json!({"url": "file:///sdcard"})).is_err());
        assert!(plan_of("WATCH_VIDEO", json!({"video_id": "a;reboot"})).is_err());
        let steps = plan_of("WATCH_VIDEO", json!({"url": "https://x.test/?q=';reboot;'"})).unwrap();
        assert!(
            matches!(&steps[0], AdbStep::Run(a) if a.last().map(String::as_str) == Some(r"'https://x.test/?q='\'';reboot;'\'''"))
        );
    }

    #[test]
    fn like_taps_the_given_point_after_opening_the_url() {
        assert_eq!(
            plan_of("LIKE_VIDEO", json!({"x": 100, "y": 200})).unwrap(),
            vec![run(&["-s", "ABC123", "shell", "input", "tap", "100", "200"])]
        );
        let steps = plan_of("SUBSCRIBE_CHANNEL", json!({"x": 1, "y": 2, "url": "https://y.test/c"})).unwrap();
        assert_eq!(steps.len(), 3);
        assert_eq!(steps[1], AdbStep::Wait(SETTLE));
        assert!(plan_of("LIKE_VIDEO", json!({"x": 1})).is_err());
    }

    #[test]
    fn comments_are_typed_quoted_with_spaces_as_percent_s() {
        assert_eq!(
            plan_of(
                "WRITE_COMMENT",
                json!({"text": "nice one's", "x": 5, "y": 6, "submit_x": 7, "submit_y": 8})
            )
            .unwrap(),
            vec![
                run(&["-s", "ABC123", "shell", "input", "tap", "5", "6"]),
                run(&["-s", "ABC123", "shell", "input", "text", r"'nice%sone'\''s'"]),
                run(&["-s", "ABC123", "shell", "input", "tap", "7", "8"]),
            ]
        );
        assert!(plan_of("WRITE_COMMENT", json!({"text": "좋아요"})).is_err());
    }

    #[test]
    fn restart_reboots() {
        assert_eq!(
            plan_of("RESTART_DEVICE", json!({})).unwrap(),
            vec![run(&["-s", "ABC123", "reboot"])]
        );
    }

    #[test]
    fn persona_puts_each_setting() {
        assert_eq!(
            plan_of(
                "UPDATE_PERSONA",
                json!({"settings": [{"namespace": "system", "key": "font_scale", "value": "1.1"}]})
            )
            .unwrap(),
            vec![run(&[
                "-s",
                "ABC123",
                "shell",
                "settings",
                "put",
                "system",
                "font_scale",
                "'1.1'"
            ])]
        );
        assert!(
            plan_of(
                "UPDATE_PERSONA",
                json!({"settings": [{"namespace": "root", "key": "k", "value": "v"}]})
            )
            .is_err()
        );
        assert!(
            plan_of(
                "UPDATE_PERSONA",
                json!({"settings": [{"namespace": "global", "key": "k;rm", "value": "v"}]})
            )
            .is_err()
        );
    }

    #[test]
    fn sync_state_reads_getprop() {
        assert_eq!(
            plan_of("SYNC_STATE", json!({})).unwrap(),
            vec![run(&["-s", "ABC123", "shell", "getprop"])]
        );
        let props = parse_getprop("[ro.product.model]: [SM-G960N]\n[ro.build.version.sdk]: [29]\ngarbage\n");
        assert_eq!(props.get("ro.product.model").map(String::as_str), Some("SM-G960N"));
        assert_eq!(props.len(), 2);
    }

    #[test]
    fn unknown_types_are_unsupported() {
        assert!(matches!(plan_of("DANCE", json!({})), Err(DriverError::Unsupported(_))));
    }

    #[test]
    fn devices_lists_only_ready_ones() {
        let out = "List of devices attached\nABC123\tdevice\nDEF456\tunauthorized\n10.0.0.5:5555\tdevice\n\n";
        assert_eq!(
            parse_devices(out),
            vec![DeviceSerial::from("ABC123"), DeviceSerial::from("10.0.0.5:5555")]
        );
    }

    #[tokio::test]
    async fn a_missing_adb_is_a_clear_error() {
        let d = AdbDriver::new("/nonexistent/relaymesh-adb");
        let err = d.devices().await.unwrap_err();
        assert!(matches!(err, DriverError::AdbMissing { .. }), "{err}");
        assert!(err.to_string().contains("ADB_PATH"));
    }
}
