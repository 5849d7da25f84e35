//! The engine driven against an in-memory fake of [`Ops`] with a virtual clock.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aloft_api::deploy::{DeployPlan, DeployStatus, DeployStrategy, MaxUnavailableSpec};
use aloft_api::{
    CheckStatus, HostStatus, ImageRef, Machine, MachineConfig, MachineEvent, MachineState,
};

use crate::{batch_size, Deploy, DeployError, Ops, OpsError, Step};

/// An image whose machines exit as soon as they start.
const CRASHES: &str = "crashes";
/// An image whose machines start but whose check stays critical.
const CRITICAL: &str = "critical";

#[derive(Default)]
struct World {
    machines: BTreeMap<String, Machine>,
    next: u64,
    clock: Duration,
    cordoned: BTreeSet<String>,
    /// The most machines of the old release cordoned at once.
    max_cordoned: usize,
    created: usize,
    cancel: bool,
    release_command_fails: bool,
    ops: Vec<String>,
}

struct Fake {
    base: Instant,
    world: Mutex<World>,
}

fn config(image: &str, group: &str, checks: bool) -> MachineConfig {
    let mut c: MachineConfig = serde_json::from_value(serde_json::json!({"image": image}))
        .expect("a config with an image");
    c.metadata = Some(BTreeMap::from([(
        "fly_process_group".to_owned(),
        group.to_owned(),
    )]));
    if checks {
        c.checks = Some(
            serde_json::from_value(serde_json::json!({"web": {"type": "tcp", "port": 8080}}))
                .expect("checks"),
        );
    }
    c
}

impl Fake {
    fn new() -> Fake {
        Fake {
            base: Instant::now(),
            world: Mutex::new(World::default()),
        }
    }

    fn with_machines(n: usize, image: &str, checks: bool) -> Fake {
        let fake = Fake::new();
        {
            let mut w = fake.world.lock().unwrap();
            for _ in 0..n {
                let m = w.new_machine(config(image, "app", checks), "ams", true);
                w.machines.insert(m.id.clone(), m);
            }
            w.created = 0;
        }
        fake
    }

    fn live(&self) -> Vec<Machine> {
        let w = self.world.lock().unwrap();
        w.machines
            .values()
            .filter(|m| m.state != MachineState::Destroyed)
            .cloned()
            .collect()
    }

    fn images(&self) -> Vec<String> {
        self.live().iter().map(|m| m.config.image.clone()).collect()
    }
}

impl World {
    fn new_machine(&mut self, config: MachineConfig, region: &str, start: bool) -> Machine {
        self.next += 1;
        self.created += 1;
        let id = format!("{:014x}", self.next);
        let mut m = Machine {
            id: id.clone(),
            name: id.clone(),
            state: MachineState::Created,
            region: region.to_owned(),
            instance_id: String::new(),
            version: String::new(),
            private_ip: String::new(),
            config,
            image_ref: ImageRef::default(),
            events: Vec::new(),
            checks: Vec::new(),
            host_status: HostStatus::Ok,
            created_at: String::new(),
            updated_at: String::new(),
            nonce: None,
        };
        self.boot(&mut m, start);
        m
    }

    /// A new instance of `m`, started or not.
    fn boot(&mut self, m: &mut Machine, start: bool) {
        self.next += 1;
        m.instance_id = format!("i{}", self.next);
        m.checks.clear();
        if !start {
            m.state = MachineState::Created;
            return;
        }
        let ts = self.clock.as_millis() as i64;
        match m.config.image.as_str() {
            CRASHES => {
                m.state = MachineState::Stopped;
                m.events.push(MachineEvent {
                    id: format!("e{}", self.next),
                    kind: "exit".to_owned(),
                    status: "stopped".to_owned(),
                    source: "flyd".to_owned(),
                    timestamp: ts + 1,
                    request: Some(serde_json::json!({"exit_event": {"exit_code": 3}})),
                });
            }
            image => {
                m.state = MachineState::Started;
                if m.config.checks.is_some() {
                    m.checks.push(CheckStatus {
                        name: "web".to_owned(),
                        status: if image == CRITICAL {
                            "critical"
                        } else {
                            "passing"
                        }
                        .to_owned(),
                        output: "connection refused".to_owned(),
                        updated_at: String::new(),
                    });
                }
            }
        }
    }

    fn note_cordons(&mut self) {
        let old = self
            .cordoned
            .iter()
            .filter(|id| {
                self.machines
                    .get(*id)
                    .is_some_and(|m| m.config.image == "v1" && m.state == MachineState::Started)
            })
            .count();
        self.max_cordoned = self.max_cordoned.max(old);
    }
}

#[async_trait::async_trait]
impl Ops for Fake {
    async fn list_machines(&self, _app: &str) -> Result<Vec<Machine>, OpsError> {
        Ok(self.live())
    }
    async fn get_machine(&self, _app: &str, id: &str) -> Result<Machine, OpsError> {
        let mut w = self.world.lock().unwrap();
        let m = w
            .machines
            .get_mut(id)
            .ok_or_else(|| OpsError::NotFound(id.to_owned()))?;
        // The host acknowledges a created machine as stopped.
        if m.state == MachineState::Created {
            m.state = MachineState::Stopped;
        }
        Ok(m.clone())
    }
    async fn create_machine(
        &self,
        _app: &str,
        config: &MachineConfig,
        region: &str,
        skip_launch: bool,
    ) -> Result<Machine, OpsError> {
        let mut w = self.world.lock().unwrap();
        let m = w.new_machine(config.clone(), region, !skip_launch);
        w.ops.push(format!("create {}", m.id));
        w.machines.insert(m.id.clone(), m.clone());
        Ok(m)
    }
    async fn start_machine(&self, _app: &str, id: &str) -> Result<(), OpsError> {
        let mut w = self.world.lock().unwrap();
        let mut m = w
            .machines
            .get(id)
            .cloned()
            .ok_or_else(|| OpsError::NotFound(id.into()))?;
        let instance = m.instance_id.clone();
        w.boot(&mut m, true);
        m.instance_id = instance;
        w.machines.insert(id.to_owned(), m);
        Ok(())
    }
    async fn update_machine(
        &self,
        _app: &str,
        id: &str,
        config: &MachineConfig,
    ) -> Result<Machine, OpsError> {
        let mut w = self.world.lock().unwrap();
        let mut m = w
            .machines
            .get(id)
            .cloned()
            .ok_or_else(|| OpsError::NotFound(id.into()))?;
        let before = m.clone();
        m.config = config.clone();
        w.boot(&mut m, true);
        w.ops.push(format!("update {id} {}", config.image));
        w.machines.insert(id.to_owned(), m);
        // The answer is the machine as updated, before the new instance reports.
        let mut answer = before;
        answer.config = config.clone();
        answer.instance_id = w.machines[id].instance_id.clone();
        Ok(answer)
    }
    async fn destroy_machine(&self, _app: &str, id: &str) -> Result<(), OpsError> {
        let mut w = self.world.lock().unwrap();
        let m = w
            .machines
            .get_mut(id)
            .ok_or_else(|| OpsError::NotFound(id.into()))?;
        m.state = MachineState::Destroyed;
        w.ops.push(format!("destroy {id}"));
        Ok(())
    }
    async fn cordon(&self, _app: &str, ids: &[String], _confirm: bool) -> Result<(), OpsError> {
        let mut w = self.world.lock().unwrap();
        w.cordoned.extend(ids.iter().cloned());
        w.note_cordons();
        Ok(())
    }
    async fn admit(&self, _app: &str, ids: &[String]) -> Result<(), OpsError> {
        let mut w = self.world.lock().unwrap();
        for id in ids {
            w.cordoned.remove(id);
        }
        Ok(())
    }
    async fn release_command(
        &self,
        _app: &str,
        _version: u64,
        _plan: &DeployPlan,
    ) -> Result<Vec<String>, OpsError> {
        if self.world.lock().unwrap().release_command_fails {
            return Err(OpsError::Failed(
                "release command failed with exit code 1; deploy aborted".into(),
            ));
        }
        Ok(vec!["migrated".to_owned()])
    }
    fn wall_ms(&self) -> i64 {
        self.world.lock().unwrap().clock.as_millis() as i64
    }
    fn now(&self) -> Instant {
        self.base + self.world.lock().unwrap().clock
    }
    async fn sleep(&self, d: Duration) {
        self.world.lock().unwrap().clock += d;
    }
    fn cancelled(&self) -> bool {
        self.world.lock().unwrap().cancel
    }
}

fn plan(image: &str, strategy: DeployStrategy, checks: bool) -> DeployPlan {
    DeployPlan {
        image: image.to_owned(),
        configs: BTreeMap::from([("app".to_owned(), config(image, "app", checks))]),
        strategy,
        max_unavailable: MaxUnavailableSpec::Fraction(0.33),
        region: "ams".to_owned(),
        regions: None,
        per_region: 1,
        wait_timeout_secs: 30,
        drain_ms: 100,
        release_command: None,
        description: String::new(),
    }
}

async fn run(fake: &Fake, deploy: &mut Deploy) -> DeployStatus {
    deploy
        .run(fake, |_| {})
        .await
        .expect("no invalid transition")
}

#[test]
fn batches_take_max_unavailable_but_never_the_whole_group() {
    let third = MaxUnavailableSpec::Fraction(0.33);
    assert_eq!(batch_size(third, 1), 1);
    assert_eq!(batch_size(third, 2), 1);
    assert_eq!(batch_size(third, 3), 1, "0.99 rounds down, at least one");
    assert_eq!(batch_size(third, 10), 3);
    assert_eq!(batch_size(third, 50), 16);
    assert_eq!(batch_size(MaxUnavailableSpec::Count(5), 3), 2);
    assert_eq!(batch_size(MaxUnavailableSpec::Count(2), 10), 2);
    assert_eq!(batch_size(MaxUnavailableSpec::Fraction(0.99), 4), 3);
}

#[tokio::test]
async fn a_rolling_deploy_replaces_ten_machines_a_batch_at_a_time() {
    let fake = Fake::with_machines(10, "v1", true);
    let mut d = Deploy::new("d1", "web", 2, plan("v2", DeployStrategy::Rolling, true));
    assert_eq!(
        run(&fake, &mut d).await,
        DeployStatus::Succeeded,
        "{:?}",
        d.events()
    );
    assert_eq!(fake.images(), vec!["v2"; 10]);
    let w = fake.world.lock().unwrap();
    assert_eq!(w.created, 0, "rolling updates in place");
    assert_eq!(w.max_cordoned, 3, "0.33 of 10 at a time");
    assert!(w.cordoned.is_empty(), "every machine takes traffic again");
    drop(w);
    let healthy = d.events().iter().filter(|e| e.status == "healthy").count();
    assert_eq!(healthy, 10);
    assert!(d.error_message().is_none());
}

#[tokio::test]
async fn a_machine_that_exits_rolls_the_deploy_back() {
    let fake = Fake::with_machines(3, "v1", false);
    let mut d = Deploy::new(
        "d1",
        "web",
        3,
        plan(CRASHES, DeployStrategy::Rolling, false),
    );
    assert_eq!(run(&fake, &mut d).await, DeployStatus::Failed);
    let err = d.error_message().unwrap();
    assert!(err.starts_with("Release v3 failed: machine "), "{err}");
    assert!(err.contains("exited after starting (exit code 3)"), "{err}");
    assert!(err.contains("rolled back 1 machine(s)"), "{err}");
    assert!(
        err.contains("more: aloft logs --app web --machine"),
        "{err}"
    );
    assert_eq!(fake.images(), vec!["v1"; 3]);
    assert!(fake.world.lock().unwrap().cordoned.is_empty());
    // The first batch failed: the other machines were never touched.
    let updates = fake
        .world
        .lock()
        .unwrap()
        .ops
        .iter()
        .filter(|o| o.starts_with("update"))
        .count();
    assert_eq!(updates, 2, "one update and its rollback");
}

#[tokio::test]
async fn a_critical_check_fails_after_the_wait_timeout() {
    let fake = Fake::with_machines(2, "v1", true);
    let mut d = Deploy::new(
        "d1",
        "web",
        2,
        plan(CRITICAL, DeployStrategy::Rolling, true),
    );
    assert_eq!(run(&fake, &mut d).await, DeployStatus::Failed);
    let err = d.error_message().unwrap();
    assert!(
        err.contains("check web is critical after 30s: connection refused"),
        "{err}"
    );
    assert_eq!(fake.images(), vec!["v1"; 2]);
}

#[tokio::test]
async fn a_group_of_one_surges_and_the_old_machine_goes() {
    let fake = Fake::with_machines(1, "v1", false);
    let old = fake.live()[0].id.clone();
    let mut d = Deploy::new("d1", "web", 2, plan("v2", DeployStrategy::Rolling, false));
    assert_eq!(run(&fake, &mut d).await, DeployStatus::Succeeded);
    let live = fake.live();
    assert_eq!(live.len(), 1);
    assert_ne!(live[0].id, old);
    assert_eq!(live[0].config.image, "v2");
    assert!(d
        .events()
        .iter()
        .any(|e| e.message == format!("app: destroyed old machine {old}")));
}

#[tokio::test]
async fn canary_and_bluegreen_end_with_the_same_number_of_new_machines() {
    for strategy in [DeployStrategy::Canary, DeployStrategy::Bluegreen] {
        let fake = Fake::with_machines(3, "v1", true);
        let mut d = Deploy::new("d1", "web", 2, plan("v2", strategy, true));
        assert_eq!(
            run(&fake, &mut d).await,
            DeployStatus::Succeeded,
            "{strategy:?}"
        );
        assert_eq!(fake.images(), vec!["v2"; 3], "{strategy:?}");
        let said = |s: &str| d.events().iter().any(|e| e.message.contains(s));
        match strategy {
            DeployStrategy::Canary => assert!(said("is healthy and takes traffic")),
            _ => assert!(said("green set healthy; cutting traffic over")),
        }
    }
}

#[tokio::test]
async fn a_failed_bluegreen_destroys_the_green_set() {
    let fake = Fake::with_machines(2, "v1", true);
    let blue: Vec<String> = fake.live().iter().map(|m| m.id.clone()).collect();
    let mut d = Deploy::new(
        "d1",
        "web",
        2,
        plan(CRASHES, DeployStrategy::Bluegreen, true),
    );
    assert_eq!(run(&fake, &mut d).await, DeployStatus::Failed);
    let live: Vec<String> = fake.live().iter().map(|m| m.id.clone()).collect();
    assert_eq!(live, blue);
    assert!(d
        .events()
        .iter()
        .any(|e| e.message.starts_with("destroyed new machine")));
}

#[tokio::test]
async fn immediate_updates_everything_without_waiting() {
    let fake = Fake::with_machines(4, "v1", false);
    let mut d = Deploy::new("d1", "web", 2, plan("v2", DeployStrategy::Immediate, false));
    assert_eq!(run(&fake, &mut d).await, DeployStatus::Succeeded);
    assert_eq!(fake.images(), vec!["v2"; 4]);
    assert!(d.steps().iter().all(|s| matches!(s, Step::Update { .. })));
}

#[tokio::test]
async fn an_app_without_machines_gets_its_first_one() {
    let fake = Fake::new();
    let mut d = Deploy::new("d1", "web", 1, plan("v1", DeployStrategy::Rolling, false));
    assert_eq!(run(&fake, &mut d).await, DeployStatus::Succeeded);
    assert_eq!(fake.images(), vec!["v1"]);
}

#[tokio::test]
async fn a_deploy_resumed_from_its_stored_state_finishes_without_duplicates() {
    let fake = Fake::with_machines(10, "v1", true);
    let mut d = Deploy::new("d1", "web", 2, plan("v2", DeployStrategy::Rolling, true));
    // Half way, the owner "restarts": the deploy is read back from what was stored.
    let mut stored = String::new();
    for _ in 0..12 {
        assert!(d.advance(&fake).await.unwrap());
        stored = serde_json::to_string(&d).unwrap();
    }
    let mut resumed: Deploy = serde_json::from_str(&stored).unwrap();
    assert_eq!(resumed, d);
    assert_eq!(run(&fake, &mut resumed).await, DeployStatus::Succeeded);
    assert_eq!(fake.images(), vec!["v2"; 10]);
}

#[tokio::test]
async fn a_create_taken_again_after_a_crash_reuses_its_machine() {
    let fake = Fake::with_machines(1, "v1", false);
    let mut d = Deploy::new("d1", "web", 2, plan("v2", DeployStrategy::Rolling, false));
    d.advance(&fake).await.unwrap(); // plan
    assert!(matches!(d.steps()[0], Step::Create { .. }));
    let before_create = serde_json::to_string(&d).unwrap();
    d.advance(&fake).await.unwrap(); // create; then the process dies before storing
    let mut resumed: Deploy = serde_json::from_str(&before_create).unwrap();
    assert_eq!(run(&fake, &mut resumed).await, DeployStatus::Succeeded);
    assert_eq!(
        fake.world.lock().unwrap().created,
        1,
        "one replacement, not two"
    );
    assert_eq!(fake.images(), vec!["v2"]);
}

#[tokio::test]
async fn a_cancelled_deploy_rolls_back_what_it_did() {
    let fake = Fake::with_machines(6, "v1", false);
    let mut d = Deploy::new("d1", "web", 2, plan("v2", DeployStrategy::Rolling, false));
    for _ in 0..8 {
        d.advance(&fake).await.unwrap();
    }
    assert!(fake.images().contains(&"v2".to_owned()));
    assert!(d.request_cancel());
    assert_eq!(run(&fake, &mut d).await, DeployStatus::Cancelled);
    assert_eq!(fake.images(), vec!["v1"; 6]);
    assert!(fake.world.lock().unwrap().cordoned.is_empty());
    let err = d.error_message().unwrap();
    assert!(
        err.starts_with("Release v2 was cancelled; rolled back"),
        "{err}"
    );
    assert!(!d.request_cancel(), "a finished deploy cannot be cancelled");
}

#[tokio::test]
async fn cancelling_interrupts_a_wait() {
    let fake = Fake::with_machines(2, "v1", true);
    let mut d = Deploy::new(
        "d1",
        "web",
        2,
        plan(CRITICAL, DeployStrategy::Rolling, true),
    );
    // Planned, cordoned, updated: the wait for checks would take 30 s; the owner cancels
    // meanwhile.
    for _ in 0..3 {
        d.advance(&fake).await.unwrap();
    }
    assert!(matches!(d.steps()[d.cursor()], Step::Wait { .. }));
    fake.world.lock().unwrap().cancel = true;
    assert_eq!(run(&fake, &mut d).await, DeployStatus::Cancelled);
    assert!(d.error_message().unwrap().contains("was cancelled"));
    assert_eq!(fake.images(), vec!["v1"; 2]);
}

#[tokio::test]
async fn a_failed_release_command_touches_no_machine() {
    let fake = Fake::with_machines(2, "v1", false);
    fake.world.lock().unwrap().release_command_fails = true;
    let mut p = plan("v2", DeployStrategy::Rolling, false);
    p.release_command = Some(aloft_api::deploy::ReleaseCommandSpec {
        command: "migrate".into(),
        timeout_secs: 60,
    });
    let mut d = Deploy::new("d1", "web", 5, p);
    assert_eq!(run(&fake, &mut d).await, DeployStatus::Failed);
    assert_eq!(
        d.error_message().unwrap(),
        "release command failed with exit code 1; deploy aborted"
    );
    assert!(fake.world.lock().unwrap().ops.is_empty());
}

#[tokio::test]
async fn a_finished_deploy_does_not_move_again() {
    let fake = Fake::with_machines(1, "v1", false);
    let mut d = Deploy::new("d1", "web", 2, plan("v2", DeployStrategy::Immediate, false));
    run(&fake, &mut d).await;
    assert!(!d.advance(&fake).await.unwrap());
    assert_eq!(
        d.transition(DeployStatus::RollingBack),
        Err(DeployError::InvalidTransition {
            from: DeployStatus::Succeeded,
            to: DeployStatus::RollingBack
        })
    );
}
