//! The pod status: what the kubelet knows about a pod's containers, and the `PodStatus` built from it. Pure:
//! `now` is passed in.
//!
//! Phase follows the kubelet's `getPhase`: `Pending` while init containers have not all succeeded or a
//! container waits for its first start; `Running` once containers run (or have stopped but will restart);
//! `Succeeded`/`Failed` once all stopped for good. Conditions `Initialized`, `ContainersReady` and `Ready` keep
//! their `lastTransitionTime` while unchanged; `PodScheduled` is the scheduler's and is kept as it was.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ContainerState as K8sState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// The state of one container.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum State {
    Waiting { reason: String, message: Option<String> },
    Running { started_at: Timestamp },
    Terminated(Terminated),
}

/// A finished run of a container.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Terminated {
    pub(crate) exit_code: i32,
    pub(crate) signal: Option<i32>,
    pub(crate) reason: String,
    pub(crate) message: Option<String>,
    pub(crate) started_at: Option<Timestamp>,
    pub(crate) finished_at: Timestamp,
    pub(crate) container_id: Option<String>,
}

/// What the kubelet knows about one container.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ContainerRecord {
    pub(crate) name: String,
    pub(crate) image: String,
    pub(crate) image_id: String,
    pub(crate) state: State,
    pub(crate) last: Option<Terminated>,
    pub(crate) ready: bool,
    pub(crate) started: bool,
    pub(crate) restart_count: i32,
    pub(crate) container_id: Option<String>,
}

impl ContainerRecord {
    pub(crate) fn new(name: &str, image: &str, reason: &str) -> Self {
        Self {
            name: name.to_owned(),
            image: image.to_owned(),
            image_id: String::new(),
            state: State::Waiting { reason: reason.to_owned(), message: None },
            last: None,
            ready: false,
            started: false,
            restart_count: 0,
            container_id: None,
        }
    }
}

/// What the kubelet knows about one pod.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PodState {
    pub(crate) host_ip: String,
    pub(crate) pod_ip: Option<String>,
    pub(crate) start_time: Timestamp,
    pub(crate) init: Vec<ContainerRecord>,
    pub(crate) main: Vec<ContainerRecord>,
    pub(crate) restart_policy: String,
    /// `Guaranteed`, `Burstable` or `BestEffort`.
    pub(crate) qos_class: &'static str,
    /// Condition type -> (status, lastTransitionTime).
    pub(crate) transitions: BTreeMap<String, (String, Timestamp)>,
}

fn k8s_state(state: &State) -> K8sState {
    match state {
        State::Waiting { reason, message } => K8sState {
            waiting: Some(ContainerStateWaiting { reason: Some(reason.clone()), message: message.clone() }),
            ..K8sState::default()
        },
        State::Running { started_at } => K8sState {
            running: Some(ContainerStateRunning { started_at: Some(Time(*started_at)) }),
            ..K8sState::default()
        },
        State::Terminated(t) => K8sState { terminated: Some(k8s_terminated(t)), ..K8sState::default() },
    }
}

fn k8s_terminated(t: &Terminated) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: t.exit_code,
        signal: t.signal,
        reason: Some(t.reason.clone()),
        message: t.message.clone(),
        started_at: t.started_at.map(Time),
        finished_at: Some(Time(t.finished_at)),
        container_id: t.container_id.clone(),
    }
}

fn container_status(record: &ContainerRecord) -> ContainerStatus {
    ContainerStatus {
        name: record.name.clone(),
        image: record.image.clone(),
        image_id: record.image_id.clone(),
        container_id: record.container_id.clone(),
        ready: record.ready,
        started: Some(record.started),
        restart_count: record.restart_count,
        state: Some(k8s_state(&record.state)),
        last_state: Some(record.last.as_ref().map_or_else(K8sState::default, |t| K8sState {
            terminated: Some(k8s_terminated(t)),
            ..K8sState::default()
        })),
        ..ContainerStatus::default()
    }
}

impl PodState {
    /// Whether every init container has succeeded.
    pub(crate) fn initialized(&self) -> bool {
        self.init.iter().all(|c| matches!(&c.state, State::Terminated(t) if t.exit_code == 0))
    }

    /// The pod phase.
    pub(crate) fn phase(&self) -> &'static str {
        let init_failed_for_good = self.restart_policy == "Never"
            && self.init.iter().any(|c| matches!(&c.state, State::Terminated(t) if t.exit_code != 0));
        if init_failed_for_good {
            return "Failed";
        }
        if !self.initialized() {
            return "Pending";
        }
        let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
        for record in &self.main {
            match &record.state {
                State::Running { .. } => running += 1,
                State::Terminated(t) => {
                    stopped += 1;
                    if t.exit_code == 0 {
                        succeeded += 1;
                    }
                }
                State::Waiting { .. } if record.last.is_some() => stopped += 1,
                State::Waiting { .. } => waiting += 1,
            }
        }
        if waiting > 0 {
            "Pending"
        } else if running > 0 {
            "Running"
        } else if stopped > 0 {
            if self.restart_policy == "Always" {
                "Running"
            } else if stopped == succeeded {
                "Succeeded"
            } else if self.restart_policy == "Never" {
                "Failed"
            } else {
                "Running"
            }
        } else {
            "Pending"
        }
    }

    /// Records a condition's status, keeping the transition time when it did not change.
    fn condition(&mut self, kind: &str, status: bool, now: Timestamp) -> PodCondition {
        let status = if status { "True" } else { "False" }.to_owned();
        let entry = self.transitions.entry(kind.to_owned()).or_insert_with(|| (status.clone(), now));
        if entry.0 != status {
            *entry = (status.clone(), now);
        }
        PodCondition {
            type_: kind.to_owned(),
            status,
            last_transition_time: Some(Time(entry.1)),
            ..PodCondition::default()
        }
    }

    /// The status to write. `scheduled` is the scheduler's `PodScheduled` condition, kept as it is.
    pub(crate) fn build_status(&mut self, scheduled: Option<PodCondition>, now: Timestamp) -> PodStatus {
        let initialized = self.initialized();
        let containers_ready = initialized && !self.main.is_empty() && self.main.iter().all(|c| c.ready);
        let mut conditions = vec![self.condition("Initialized", initialized, now)];
        let mut ready = self.condition("Ready", containers_ready, now);
        let mut containers = self.condition("ContainersReady", containers_ready, now);
        if !containers_ready {
            let not_ready: Vec<&str> = self.main.iter().filter(|c| !c.ready).map(|c| c.name.as_str()).collect();
            let message = format!("containers with unready status: [{}]", not_ready.join(" "));
            ready.reason = Some("ContainersNotReady".to_owned());
            ready.message = Some(message.clone());
            containers.reason = Some("ContainersNotReady".to_owned());
            containers.message = Some(message);
        }
        if !initialized {
            let pending: Vec<&str> = self
                .init
                .iter()
                .filter(|c| !matches!(&c.state, State::Terminated(t) if t.exit_code == 0))
                .map(|c| c.name.as_str())
                .collect();
            conditions[0].reason = Some("ContainersNotInitialized".to_owned());
            conditions[0].message = Some(format!("containers with incomplete status: [{}]", pending.join(" ")));
        }
        conditions.push(ready);
        conditions.push(containers);
        conditions.extend(scheduled);
        PodStatus {
            phase: Some(self.phase().to_owned()),
            host_ip: Some(self.host_ip.clone()),
            pod_ip: self.pod_ip.clone(),
            pod_ips: self.pod_ip.clone().map(|ip| vec![PodIP { ip }]),
            start_time: Some(Time(self.start_time)),
            conditions: Some(conditions),
            container_statuses: Some(self.main.iter().map(container_status).collect()),
            init_container_statuses: (!self.init.is_empty()).then(|| self.init.iter().map(container_status).collect()),
            qos_class: Some(self.qos_class.to_owned()),
            ..PodStatus::default()
        }
    }
}

/// The pod's QoS class from its containers' cpu and memory requests and limits (requests default to limits).
pub(crate) fn qos_class(spec: &k8s_openapi::api::core::v1::PodSpec) -> &'static str {
    let containers: Vec<_> = spec.containers.iter().chain(spec.init_containers.iter().flatten()).collect();
    let mut any = false;
    let mut guaranteed = true;
    for container in containers {
        let resources = container.resources.clone().unwrap_or_default();
        let limits = resources.limits.unwrap_or_default();
        let requests = resources.requests.unwrap_or_default();
        for name in ["cpu", "memory"] {
            let limit = limits.get(name);
            let request = requests.get(name).or(limit);
            any |= limit.is_some() || request.is_some();
            guaranteed &= limit.is_some() && request == limit;
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(policy: &str) -> PodState {
        PodState {
            host_ip: "10.213.0.1".to_owned(),
            pod_ip: Some("10.213.0.2".to_owned()),
            start_time: Timestamp::UNIX_EPOCH,
            init: vec![ContainerRecord::new("init", "busybox", "PodInitializing")],
            main: vec![ContainerRecord::new("prometheus", "prom/prometheus:v2.53.3", "PodInitializing")],
            restart_policy: policy.to_owned(),
            qos_class: "BestEffort",
            transitions: BTreeMap::new(),
        }
    }

    fn terminated(code: i32) -> State {
        State::Terminated(Terminated {
            exit_code: code,
            signal: None,
            reason: if code == 0 { "Completed" } else { "Error" }.to_owned(),
            message: None,
            started_at: None,
            finished_at: Timestamp::UNIX_EPOCH,
            container_id: None,
        })
    }

    #[test]
    fn pod_is_pending_until_init_containers_succeed_then_running_and_ready() {
        let mut pod = state("Always");
        assert_eq!(pod.phase(), "Pending");
        pod.init[0].state = terminated(0);
        pod.main[0].state = State::Running { started_at: Timestamp::UNIX_EPOCH };
        assert_eq!(pod.phase(), "Running");
        pod.main[0].ready = true;
        let status = pod.build_status(None, Timestamp::UNIX_EPOCH);
        let ready = status.conditions.unwrap().into_iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "True");
    }

    #[test]
    fn transition_time_is_kept_while_the_condition_does_not_change() {
        let mut pod = state("Always");
        let t0 = Timestamp::UNIX_EPOCH;
        let t1 = Timestamp::from_second(100).unwrap();
        pod.build_status(None, t0);
        let status = pod.build_status(None, t1);
        let ready = status.conditions.unwrap().into_iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.last_transition_time, Some(Time(t0)));
    }

    #[test]
    fn qos_class_follows_requests_and_limits() {
        let spec = |resources: serde_json::Value| -> k8s_openapi::api::core::v1::PodSpec {
            serde_json::from_value(serde_json::json!({"containers": [{"name": "c", "resources": resources}]})).unwrap()
        };
        assert_eq!(qos_class(&spec(serde_json::json!({}))), "BestEffort");
        assert_eq!(qos_class(&spec(serde_json::json!({"limits": {"cpu": "1", "memory": "1Gi"}}))), "Guaranteed");
        assert_eq!(qos_class(&spec(serde_json::json!({"requests": {"cpu": "100m"}}))), "Burstable");
    }

    #[test]
    fn phase_after_exit_depends_on_restart_policy() {
        for (policy, code, phase) in
            [("Never", 0, "Succeeded"), ("Never", 1, "Failed"), ("OnFailure", 0, "Succeeded"), ("Always", 0, "Running")]
        {
            let mut pod = state(policy);
            pod.init.clear();
            pod.main[0].state = terminated(code);
            assert_eq!(pod.phase(), phase, "{policy} {code}");
        }
    }
}
