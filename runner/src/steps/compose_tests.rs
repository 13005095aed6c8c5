//! Tests of the services file ([`super::compose`]): the compose constructs real projects use,
//! ignored keys and their notices, and errors located at the key with its path.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::compose::{Condition, Mount, ServicesFile, parse_services, parse_services_with};
use super::config::{Command, ConfigError};

const SERVICES_V1: &str = "\
db:
  image: busybox-db
  command: httpd -f -p 80
app:
  build:
    context: .
    dockerfile: Dockerfile.app
    args:
      VERSION: 3
  links:
    - db:database
  environment:
    - A=1
    - B=two
  volumes:
    - ./src:/app:ro
  working_dir: /app
  cached: false
";

fn services(text: &str) -> Result<ServicesFile, ConfigError> {
    parse_services(Path::new("svc.yml"), Path::new("/proj"), text)
}

fn with_vars(text: &str, vars: &[(&str, &str)]) -> Result<ServicesFile, ConfigError> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    parse_services_with(Path::new("svc.yml"), Path::new("/proj"), text, vars)
}

fn located(err: ConfigError) -> (usize, usize, String) {
    match err {
        ConfigError::Invalid {
            line,
            column,
            message,
            ..
        } => (line, column, message),
        other => panic!("expected a located error, got {other:?}"),
    }
}

#[test]
fn v1_services_parse_with_all_fields() {
    let s = services(SERVICES_V1).expect("parses");
    let app = &s.services["app"];
    let build = app.build.as_ref().expect("build");
    assert_eq!(build.context, Path::new("/proj"));
    assert_eq!(build.dockerfile, "Dockerfile.app");
    assert_eq!(build.args["VERSION"], "3");
    assert_eq!(app.depends_on, vec!["db"]);
    assert_eq!(app.environment["B"], "two");
    assert_eq!(
        app.mounts,
        vec![Mount::Bind {
            host: "/proj/src".into(),
            container: "/app".into(),
            read_only: true,
            selinux: None
        }]
    );
    assert!(!app.cached);
    assert_eq!(s.services["db"].link_aliases, vec!["database"]);
    assert_eq!(
        s.services["db"].command.as_ref().map(Command::argv),
        Some(vec!["sh".into(), "-c".into(), "httpd -f -p 80".into()])
    );
}

#[test]
fn depends_on_conditions_are_kept() {
    let s = services(
        "version: '2.1'\nservices:\n  db:\n    image: x\n  init:\n    image: x\n  app:\n    build: ./app\n    depends_on:\n      db:\n        condition: service_healthy\n      init:\n        condition: service_completed_successfully\n",
    )
    .expect("parses");
    let app = &s.services["app"];
    assert_eq!(app.depends_on, vec!["db", "init"]);
    assert_eq!(app.conditions["db"], Condition::Healthy);
    assert_eq!(app.conditions["init"], Condition::CompletedSuccessfully);
    assert_eq!(
        app.build.as_ref().map(|b| b.context.clone()),
        Some("/proj/app".into())
    );
}

#[test]
fn unknown_condition_is_located_with_its_key_path() {
    let (line, col, msg) = located(
        services("services:\n  db:\n    image: x\n  app:\n    image: x\n    depends_on:\n      db:\n        condition: service_ready\n").unwrap_err(),
    );
    assert_eq!((line, col), (8, 20), "{msg}");
    assert!(
        msg.contains("services.app.depends_on.db.condition") && msg.contains("service_ready"),
        "{msg}"
    );
}

/// A key compose does not know is still an error (a typo must not be silently dropped), at the
/// key, naming the service.
#[test]
fn unknown_service_key_is_located() {
    let (line, _, msg) = located(services("db:\n  image: x\n  imgae: y\n").unwrap_err());
    assert_eq!(line, 3, "{msg}");
    assert!(
        msg.contains("imgae") && msg.contains("services.db"),
        "{msg}"
    );
}

#[test]
fn wrong_type_names_the_key_path() {
    let err = services("services:\n  app:\n    build:\n      context: .\n      target: [a]\n")
        .unwrap_err();
    let (line, col, msg) = located(err);
    assert_eq!((line, col), (5, 15), "{msg}");
    assert!(msg.starts_with("services.app.build.target: "), "{msg}");
}

#[test]
fn yaml_syntax_error_is_located() {
    let (line, _, msg) = located(services("db:\n  image: [x\n  build: y\n").unwrap_err());
    assert!(line >= 2, "{line}: {msg}");
}

#[test]
fn unknown_dependency_is_located_at_the_entry() {
    let (line, col, msg) = located(
        services("db:\n  image: x\napp:\n  image: y\n  depends_on:\n    - dbb\n").unwrap_err(),
    );
    assert_eq!((line, col), (6, 7), "{msg}");
    assert!(msg.contains("unknown service `dbb`"), "{msg}");
}

#[test]
fn dependency_cycle_is_located() {
    let text = "a:\n  image: x\n  depends_on: [b]\nb:\n  image: x\n  links:\n    - c\nc:\n  image: x\n  depends_on: [a]\n";
    let (line, _, msg) = located(services(text).unwrap_err());
    assert!(msg.contains("a -> b -> c -> a"), "{msg}");
    assert_eq!(line, 3, "{msg}");
}

#[test]
fn service_without_image_or_build_is_rejected() {
    let err = services("app:\n  image: x\ndb:\n  command: x\n").unwrap_err();
    let (line, _, msg) = located(err);
    assert_eq!(line, 4, "{msg}");
    assert!(msg.contains("neither `image` nor `build`"), "{msg}");
}

/// Issue 13: `ports`, `restart`, `container_name`, `expose`, `deploy`, `logging`, `develop` are
/// accepted with one notice each per service, at the key's value.
#[test]
fn ignored_keys_give_one_located_notice_each() {
    let s = services(
        "services:\n  web:\n    image: x\n    ports: ['80:80']\n    restart: always\n    container_name: web\n    expose: ['80']\n    deploy: {replicas: 2}\n    logging: {driver: none}\n    develop: {watch: []}\n  db:\n    image: y\n    ports: ['5432:5432']\n",
    )
    .expect("parses");
    let paths: Vec<&str> = s.notices.iter().map(|n| n.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "services.web.ports",
            "services.web.restart",
            "services.web.container_name",
            "services.web.expose",
            "services.web.deploy",
            "services.web.logging",
            "services.web.develop",
            "services.db.ports",
        ]
    );
    assert_eq!((s.notices[0].line, s.notices[0].column), (4, 12));
    assert!(
        s.notices[0].message.contains("collide"),
        "{:?}",
        s.notices[0]
    );
}

#[test]
fn merge_keys_anchors_and_extension_fields_apply() {
    let s = services(
        "x-common: &common\n  image: base\n  environment:\n    A: '1'\nx-more: &more\n  working_dir: /w\nservices:\n  a:\n    <<: [*common, *more]\n    x-note: kept out\n  b:\n    <<: *common\n    image: own\n",
    )
    .expect("parses");
    assert_eq!(s.services["a"].image.as_deref(), Some("base"));
    assert_eq!(s.services["a"].working_dir.as_deref(), Some("/w"));
    assert_eq!(s.services["a"].environment["A"], "1");
    assert_eq!(
        s.services["b"].image.as_deref(),
        Some("own"),
        "explicit keys win"
    );
    assert!(s.notices.is_empty(), "{:?}", s.notices);
}

#[test]
fn interpolation_follows_compose() {
    let text = "services:\n  a:\n    image: 'img:${TAG:-latest}'\n    environment:\n      SET: ${SET}\n      EMPTY_DEFAULT: ${EMPTY:-fallback}\n      EMPTY_DASH: ${EMPTY-kept}\n      ALT: ${SET:+alt}\n      DOLLAR: $$HOME\n      BARE: $SET\n      UNSET: ${NOPE}\n";
    let s = with_vars(text, &[("SET", "v"), ("EMPTY", "")]).expect("parses");
    let env = &s.services["a"].environment;
    assert_eq!(s.services["a"].image.as_deref(), Some("img:latest"));
    assert_eq!(env["SET"], "v");
    assert_eq!(env["EMPTY_DEFAULT"], "fallback");
    assert_eq!(env["EMPTY_DASH"], "");
    assert_eq!(env["ALT"], "alt");
    assert_eq!(env["DOLLAR"], "$HOME");
    assert_eq!(env["BARE"], "v");
    assert_eq!(env["UNSET"], "");
}

#[test]
fn required_variable_error_is_located() {
    let (line, col, msg) = located(
        with_vars(
            "services:\n  a:\n    image: ${IMAGE:?set IMAGE to the image to test}\n",
            &[],
        )
        .unwrap_err(),
    );
    assert_eq!((line, col), (3, 12), "{msg}");
    assert!(msg.contains("set IMAGE to the image to test"), "{msg}");
}

#[test]
fn volumes_of_every_kind() {
    let s = services(
        "services:\n  a:\n    image: x\n    volumes:\n      - data:/data\n      - /anon\n      - ./src:/src:ro,z\n      - type: tmpfs\n        target: /t\n        tmpfs: {size: 1k}\nvolumes:\n  data:\n  ext:\n    external: true\n    name: shared-ext\n",
    )
    .expect("parses");
    assert_eq!(
        s.services["a"].mounts,
        vec![
            Mount::Named {
                volume: "data".into(),
                container: "/data".into(),
                read_only: false
            },
            Mount::Anonymous {
                container: "/anon".into()
            },
            Mount::Bind {
                host: "/proj/src".into(),
                container: "/src".into(),
                read_only: true,
                selinux: Some("z".into())
            },
            Mount::Tmpfs {
                container: "/t".into(),
                size: Some(1024)
            },
        ]
    );
    assert_eq!(s.volumes["data"].external, None);
    assert_eq!(s.volumes["ext"].external.as_deref(), Some("shared-ext"));
}

#[test]
fn bad_volume_mode_is_located() {
    let (line, _, msg) = located(
        services("services:\n  a:\n    image: x\n    volumes:\n      - ./a:/a:rx\n").unwrap_err(),
    );
    assert_eq!(line, 5, "{msg}");
    assert!(
        msg.contains("services.a.volumes") && msg.contains("`rx`"),
        "{msg}"
    );
}

#[test]
fn undeclared_secret_is_located() {
    let (line, _, msg) =
        located(services("services:\n  a:\n    image: x\n    secrets: [token]\n").unwrap_err());
    assert_eq!(line, 4, "{msg}");
    assert!(msg.contains("`token`"), "{msg}");
}

#[test]
fn bad_duration_is_located() {
    let (line, col, msg) = located(
        services("services:\n  a:\n    image: x\n    healthcheck:\n      test: 'true'\n      interval: soon\n").unwrap_err(),
    );
    assert_eq!((line, col), (6, 17), "{msg}");
    assert!(msg.contains("services.a.healthcheck.interval"), "{msg}");
}

/// Compose accepts `KEY=value with spaces` in env files; `dotenvy` alone would not.
#[test]
fn env_files_read_as_compose_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.env");
    std::fs::write(
        &path,
        "# comment\nPLAIN=one\nSPACES=hello world  # trailing comment\nexport EXPORTED=yes\nQUOTED=\"a \\\"b\\\" c\"\nSINGLE='x y'\nEMPTY=\nTRICKY=a \"b\" \\c\n",
    )
    .unwrap();
    let vars: HashMap<String, String> = super::compose::read_env_file(&path)
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(vars["PLAIN"], "one");
    assert_eq!(vars["SPACES"], "hello world");
    assert_eq!(vars["EXPORTED"], "yes");
    assert_eq!(vars["QUOTED"], "a \"b\" c");
    assert_eq!(vars["SINGLE"], "x y");
    assert_eq!(vars["EMPTY"], "");
    assert_eq!(vars["TRICKY"], "a \"b\" \\c");
}

#[test]
fn healthy_condition_without_a_healthcheck_is_noticed() {
    let s = services(
        "services:\n  db:\n    image: db\n  app:\n    image: app\n    depends_on:\n      db:\n        condition: service_healthy\n",
    )
    .unwrap();
    assert!(
        s.notices
            .iter()
            .any(|n| n.path == "services.app.depends_on.db" && n.message.contains("HEALTHCHECK")),
        "{:?}",
        s.notices
    );
}

/// A service only a `profiles:`-gated tool uses is neither built nor started by steps that do
/// not need it; a step that names it gets it.
#[test]
fn profiled_services_are_needed_only_when_a_step_uses_them() {
    let s = services(
        "services:\n  db:\n    image: db\n  app:\n    build: .\n    depends_on: [db]\n  admin:\n    build: ./admin\n    profiles: [debug]\n    depends_on: [db]\n",
    )
    .unwrap();
    let plan_for = |steps: &str| {
        let nodes = super::config::parse_steps(Path::new("steps.yml"), steps, &s).unwrap();
        super::plan::build_plan(&nodes, "main")
    };
    let plan = plan_for("- {name: t, service: app}\n");
    assert_eq!(
        super::plan::needed_services(&plan, &s.services),
        vec!["db", "app"]
    );
    let plan = plan_for("- {name: t, service: app}\n- {name: a, service: admin}\n");
    assert_eq!(
        super::plan::needed_services(&plan, &s.services),
        vec!["db", "app", "admin"]
    );
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/compose")
}

/// What `--check` does for one services file: parse it, then a steps file with one step per
/// service, and build the plan. Returns the parsed file.
pub fn check_file(path: &Path) -> Result<ServicesFile, String> {
    let svc = super::compose::load_services(path).map_err(|e| e.to_string())?;
    let steps: String = svc
        .services
        .keys()
        .map(|name| format!("- name: step-{name}\n  service: {name}\n"))
        .collect();
    let nodes = super::config::parse_steps(Path::new("steps.yml"), &steps, &svc)
        .map_err(|e| e.to_string())?;
    let plan = super::plan::build_plan(&nodes, "main");
    let text = super::check::format_plan(&svc, &plan, "main");
    if !text.contains("plan for branch") {
        return Err(format!("no plan printed: {text}"));
    }
    Ok(svc)
}

/// Every hand-written fixture passes `--check`.
#[test]
fn every_compose_fixture_passes_check() {
    let mut checked = 0;
    for entry in std::fs::read_dir(fixtures_dir()).unwrap() {
        let path = entry.unwrap().path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext != "yaml" && ext != "yml" {
            continue;
        }
        check_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} fixtures found");
    // The end-to-end projects too.
    for file in [
        "compose-sample/compose.yaml",
        "jet-sample/layercache-services.yml",
    ] {
        let path = fixtures_dir().join("..").join(file);
        check_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

#[test]
fn webapp_fixture_is_read_as_compose_would() {
    let s = check_file(&fixtures_dir().join("webapp.yaml")).unwrap();
    assert_eq!(s.name.as_deref(), Some("webapp"));
    let web = &s.services["web"];
    let build = web.build.as_ref().unwrap();
    assert_eq!(build.target.as_deref(), Some("runtime"));
    assert_eq!(build.cache_from, vec!["example.test/webapp/web:cache"]);
    assert_eq!(web.user.as_deref(), Some("1000:1000"));
    assert_eq!(web.environment["FROM_ENV_FILE"], "yes");
    assert_eq!(
        web.environment["DB_HOST"], "db",
        "environment beats env_file"
    );
    assert_eq!(web.environment["LITERAL_DOLLAR"], "$HOME");
    assert_eq!(web.conditions["db"], Condition::Healthy);
    assert!(web.mounts.iter().any(|m| matches!(m, Mount::Bind { container, read_only: true, .. } if container == "/run/secrets/api_key")));
    assert_eq!(s.services["db"].link_aliases, vec!["database", "postgres"]);
    assert!(s.services["db"].healthcheck.is_some());
    assert_eq!(s.services["adminer"].profiles, vec!["debug"]);
    for key in [
        "services.web.ports",
        "services.web.restart",
        "services.web.container_name",
        "services.web.expose",
        "services.web.deploy",
        "services.web.logging",
        "services.web.develop",
        "version",
        "networks",
    ] {
        assert!(
            s.notices.iter().any(|n| n.path == key),
            "no notice for {key}: {:?}",
            s.notices
        );
    }
}

/// The real compose files listed in `tests/fixtures/compose-corpus-sources.txt` are kept outside
/// the repository (their licences are their projects'); point `LAYERCACHE_COMPOSE_CORPUS` at the
/// directory holding them and run this test with `--ignored`.
#[test]
#[ignore = "needs the corpus of real compose files: set LAYERCACHE_COMPOSE_CORPUS"]
fn every_corpus_file_passes_check() {
    let dir = std::env::var("LAYERCACHE_COMPOSE_CORPUS")
        .expect("LAYERCACHE_COMPOSE_CORPUS names the corpus directory");
    let mut failures = Vec::new();
    let mut checked = 0;
    for entry in walk(Path::new(&dir)) {
        let name = entry.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !(name.contains("compose") && (name.ends_with(".yml") || name.ends_with(".yaml"))) {
            continue;
        }
        checked += 1;
        if let Err(e) = check_file(&entry) {
            failures.push(format!("{}: {e}", entry.display()));
        }
    }
    assert!(checked >= 30, "only {checked} corpus files found in {dir}");
    assert!(
        failures.is_empty(),
        "{} of {checked} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}
