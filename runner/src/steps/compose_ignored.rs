//! The compose keys that cannot mean anything for a test step, each with the reason printed in its
//! notice. Keys listed here are accepted and dropped; keys in no list and not read by
//! [`super::compose_raw`] are errors, as in compose itself.

/// Service keys that mean nothing for a test step, and why.
pub const SERVICE_IGNORED: &[(&str, &str)] = &[
    (
        "ports",
        "ignored: steps reach services over their own network, and published ports would collide between parallel steps",
    ),
    (
        "expose",
        "ignored: every port is reachable on the step's network",
    ),
    (
        "restart",
        "ignored: a step's containers live as long as the step",
    ),
    (
        "container_name",
        "ignored: fixed names would collide between parallel steps; the service name answers on the step's network",
    ),
    ("deploy", "ignored: no orchestrator runs the steps"),
    ("logging", "ignored: step output is printed by layercache"),
    ("develop", "ignored: no file watching in CI"),
    ("network_mode", "ignored: each step runs on its own network"),
    (
        "external_links",
        "ignored: steps only see their own services",
    ),
    ("pull_policy", "ignored: missing images are pulled"),
    (
        "stop_grace_period",
        "ignored: step containers are removed at once",
    ),
    (
        "stop_signal",
        "ignored: step containers are removed at once",
    ),
    ("scale", "ignored: one container per service and step"),
    (
        "configs",
        "ignored: not supported; bind-mount the file instead",
    ),
    (
        "extends",
        "ignored: not supported; copy the keys or use a merge key (`<<`)",
    ),
    ("annotations", "ignored"),
    ("attach", "ignored"),
    ("blkio_config", "ignored"),
    ("cgroup", "ignored"),
    ("cgroup_parent", "ignored"),
    ("cpu_count", "ignored: resource limits are the worker's"),
    ("cpu_percent", "ignored: resource limits are the worker's"),
    ("cpu_shares", "ignored: resource limits are the worker's"),
    ("cpu_period", "ignored: resource limits are the worker's"),
    ("cpu_quota", "ignored: resource limits are the worker's"),
    ("cpus", "ignored: resource limits are the worker's"),
    ("cpuset", "ignored: resource limits are the worker's"),
    ("mem_limit", "ignored: resource limits are the worker's"),
    (
        "mem_reservation",
        "ignored: resource limits are the worker's",
    ),
    ("memswap_limit", "ignored: resource limits are the worker's"),
    (
        "mem_swappiness",
        "ignored: resource limits are the worker's",
    ),
    ("oom_kill_disable", "ignored"),
    ("oom_score_adj", "ignored"),
    ("pids_limit", "ignored: resource limits are the worker's"),
    ("credential_spec", "ignored"),
    ("device_cgroup_rules", "ignored"),
    ("devices", "ignored: no host devices in CI steps"),
    ("dns", "ignored: the step network's DNS answers"),
    ("dns_opt", "ignored"),
    ("dns_search", "ignored"),
    ("domainname", "ignored"),
    ("gpus", "ignored"),
    ("group_add", "ignored"),
    ("ipc", "ignored"),
    ("isolation", "ignored"),
    ("label_file", "ignored"),
    ("mac_address", "ignored"),
    ("pid", "ignored"),
    ("post_start", "ignored"),
    ("pre_stop", "ignored"),
    ("runtime", "ignored"),
    ("security_opt", "ignored"),
    ("stdin_open", "ignored: steps have no terminal"),
    ("tty", "ignored: steps have no terminal"),
    ("storage_opt", "ignored"),
    ("sysctls", "ignored"),
    ("userns_mode", "ignored"),
    ("uts", "ignored"),
    ("volumes_from", "ignored"),
    ("use_api_socket", "ignored"),
    ("models", "ignored"),
    ("provider", "ignored"),
];

/// `build:` keys that mean nothing here.
pub const BUILD_IGNORED: &[(&str, &str)] = &[
    ("labels", "ignored"),
    (
        "network",
        "ignored: builds use the engine's default network",
    ),
    ("shm_size", "ignored"),
    ("ssh", "ignored"),
    ("secrets", "ignored"),
    ("tags", "ignored: service images get their own tag"),
    ("platforms", "ignored: the worker's platform is built"),
    (
        "additional_contexts",
        "ignored: not supported by the classic builder",
    ),
    ("extra_hosts", "ignored"),
    ("isolation", "ignored"),
    ("no_cache", "ignored: use --no-cache-build"),
    ("pull", "ignored"),
    ("privileged", "ignored"),
    ("ulimits", "ignored"),
    ("entitlements", "ignored"),
    ("cache_to", "ignored: layers go to the layer cache"),
];

/// Top-level keys that mean nothing here.
pub const TOP_IGNORED: &[(&str, &str)] = &[
    ("version", "ignored: obsolete in the compose specification"),
    (
        "configs",
        "ignored: not supported; bind-mount the file instead",
    ),
    (
        "include",
        "ignored: not supported; list the services in this file",
    ),
    ("models", "ignored"),
];
