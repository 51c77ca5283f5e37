//! Simulated devices `SIM-0001`…: each command sleeps a base duration plus
//! jitter, fails with a configured probability, or never ends on a "hang"
//! serial. Randomness is seeded by the command id, so a given command
//! always takes the same time and has the same outcome.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::{DeviceDriver, DriverError};
use crate::config::AgentConfig;
use crate::frames::{Command, CommandType};
use crate::ids::DeviceSerial;
use relaymesh_wire::node::wire_name;

/// Simulated device farm.
#[derive(Debug, Clone)]
pub struct SimDriver {
    inner: Arc<SimSpec>,
}

#[derive(Debug)]
struct SimSpec {
    devices: Vec<DeviceSerial>,
    known: HashSet<DeviceSerial>,
    task: Duration,
    jitter_ms: u64,
    fail_rate: f64,
    hang: HashSet<DeviceSerial>,
}

/// `SIM-0001` for index 1.
pub fn sim_serial(index: u32) -> DeviceSerial {
    DeviceSerial(format!("SIM-{index:04}"))
}

impl SimDriver {
    pub fn new(
        devices: u32,
        task: Duration,
        jitter_ms: u64,
        fail_rate: f64,
        hang: impl IntoIterator<Item = DeviceSerial>,
    ) -> Self {
        let devices: Vec<_> = (1..=devices).map(sim_serial).collect();
        Self {
            inner: Arc::new(SimSpec {
                known: devices.iter().cloned().collect(),
                devices,
                task,
                jitter_ms,
                fail_rate,
                hang: hang.into_iter().collect(),
            }),
        }
    }

    pub fn from_config(c: &AgentConfig) -> Self {
        Self::new(
            c.sim_devices,
            Duration::from_millis(c.sim_task_ms),
            c.sim_jitter_ms,
            c.sim_fail_rate,
            c.sim_hang_serials.iter().map(|s| DeviceSerial::from(s.trim())),
        )
    }

    /// How `command` will go: its duration and whether it fails. Pure, so
    /// tests can predict outcomes.
    pub fn plan(&self, command: &Command) -> (Duration, bool) {
        let mut rng = fastrand::Rng::with_seed(fnv1a(command.command_id.as_str()));
        let extra = if self.inner.jitter_ms == 0 {
            0
        } else {
            rng.u64(0..=self.inner.jitter_ms)
        };
        let fails = rng.f64() < self.inner.fail_rate;
        (self.inner.task + Duration::from_millis(extra), fails)
    }
}

/// FNV-1a: a stable seed from a string (std's hasher may change between
/// Rust releases, which would change simulated outcomes).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl DeviceDriver for SimDriver {
    async fn devices(&self) -> Result<Vec<DeviceSerial>, DriverError> {
        Ok(self.inner.devices.clone())
    }

    async fn run(&self, serial: &DeviceSerial, command: &Command) -> Result<Value, DriverError> {
        if !self.inner.known.contains(serial) {
            return Err(DriverError::UnknownDevice(serial.clone()));
        }
        if command.command_type == CommandType::Unspecified {
            return Err(DriverError::Unsupported(wire_name(command.command_type).to_owned()));
        }
        if self.inner.hang.contains(serial) {
            // A wedged device: only the agent's timeout ends this.
            std::future::pending::<()>().await;
        }
        let (duration, fails) = self.plan(command);
        tokio::time::sleep(duration).await;
        if fails {
            return Err(DriverError::Failed("simulated failure".into()));
        }
        Ok(json!({
            "simulated": true,
            "command_type": wire_name(command.command_type),
            "duration_ms": u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{CommandId, RunId};

    fn command(id: &str, serial: &str) -> Command {
        Command {
            command_id: CommandId::from(id),
            run_id: RunId::from("r1"),
            device_serial: DeviceSerial::from(serial),
            command_type: CommandType::WatchVideo,
            params: json!({}),
            timeout_ms: None,
        }
    }

    #[tokio::test]
    async fn lists_numbered_serials() {
        let d = SimDriver::new(100, Duration::ZERO, 0, 0.0, []);
        let devices = d.devices().await.unwrap();
        assert_eq!(devices.len(), 100);
        assert_eq!(devices[0].as_str(), "SIM-0001");
        assert_eq!(devices[99].as_str(), "SIM-0100");
    }

    #[test]
    fn outcomes_are_deterministic_per_command_id() {
        let d = SimDriver::new(1, Duration::from_millis(10), 50, 0.5, []);
        let a = d.plan(&command("cmd-7", "SIM-0001"));
        assert_eq!(a, d.plan(&command("cmd-7", "SIM-0001")));
        assert!(a.0 >= Duration::from_millis(10) && a.0 <= Duration::from_millis(60));
        let fails = (0..200)
            .filter(|i| d.plan(&command(&format!("c{i}"), "SIM-0001")).1)
            .count();
        assert!((50..150).contains(&fails), "{fails}");
    }

    #[tokio::test(start_paused = true)]
    async fn fail_rate_one_always_fails() {
        let d = SimDriver::new(1, Duration::from_millis(5), 0, 1.0, []);
        let err = d.run(&"SIM-0001".into(), &command("c", "SIM-0001")).await.unwrap_err();
        assert!(matches!(err, DriverError::Failed(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn hang_serials_never_finish() {
        let d = SimDriver::new(2, Duration::from_millis(5), 0, 0.0, [DeviceSerial::from("SIM-0002")]);
        let serial = DeviceSerial::from("SIM-0002");
        let cmd = command("c", "SIM-0002");
        let hung = tokio::time::timeout(Duration::from_secs(3600), d.run(&serial, &cmd)).await;
        assert!(hung.is_err());
        assert!(d.run(&"SIM-0001".into(), &command("c", "SIM-0001")).await.is_ok());
    }

    #[tokio::test]
    async fn unknown_devices_and_types_fail() {
        let d = SimDriver::new(1, Duration::ZERO, 0, 0.0, []);
        assert!(matches!(
            d.run(&"SIM-0009".into(), &command("c", "SIM-0009")).await,
            Err(DriverError::UnknownDevice(_))
        ));
        let mut cmd = command("c", "SIM-0001");
        cmd.command_type = CommandType::Unspecified;
        assert!(matches!(
            d.run(&"SIM-0001".into(), &cmd).await,
            Err(DriverError::Unsupported(_))
        ));
    }
}
