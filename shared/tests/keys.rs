//! Cache keys of real-world style Dockerfiles (`tests/dockerfiles/`), and the properties the
//! runner and the server's `prefix` lookup rely on.

use std::collections::BTreeMap;
use std::path::Path;

use layercache_shared::dockerfile::{self, ParseError};
use layercache_shared::key::{self, CacheKeys, KeyError, Platform};

fn sample(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/dockerfiles")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn args(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn linux() -> Platform {
    Platform::new("linux", "amd64")
}

fn keys(text: &str) -> CacheKeys {
    key::compute(text, &BTreeMap::new(), None, &linux()).expect("keys")
}

fn keys_with(text: &str, build_args: &[(&str, &str)], target: Option<&str>) -> CacheKeys {
    key::compute(text, &args(build_args), target, &linux()).expect("keys")
}

/// Index of the first canonical instruction starting with `start`.
fn position(k: &CacheKeys, start: &str) -> usize {
    k.instructions
        .iter()
        .position(|i| i.starts_with(start))
        .unwrap_or_else(|| {
            panic!(
                "no instruction starting with {start:?} in {:#?}",
                k.instructions
            )
        })
}

/// Asserts the two chains agree exactly on the first `n` prefixes and differ on every later one.
fn assert_diverge_at(a: &CacheKeys, b: &CacheKeys, n: usize) {
    assert_eq!(a.prefixes.len(), b.prefixes.len());
    for i in 0..a.prefixes.len() {
        assert_eq!(
            a.prefixes[i] == b.prefixes[i],
            i < n,
            "prefix {i} ({:?} vs {:?}) should be {} (chains diverge at {n})",
            a.instructions[i],
            b.instructions[i],
            if i < n { "equal" } else { "different" }
        );
    }
    assert_ne!(a.key, b.key);
}

#[test]
fn go_multistage_builds_builder_and_final_but_not_test_stage() {
    let text = sample("go-multistage.Dockerfile");
    let df = dockerfile::parse(&text).unwrap();
    assert_eq!(df.syntax.as_deref(), Some("docker/dockerfile:1.7"));
    assert_eq!(df.global_args.len(), 2);
    assert_eq!(df.stage_names(), vec!["builder", "test"]);
    let k = keys(&text);
    let used: Vec<usize> = k.stages.iter().map(|s| s.index).collect();
    assert_eq!(used, vec![0, 2], "`test` is not needed by the final stage");
    assert_eq!(k.instructions.len(), k.prefixes.len());
    assert!(k.instructions.iter().any(|i| i.contains(
        "RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
         CGO_ENABLED=0 GOOS=$TARGETOS"
    )));
    // The final stage is the target: its stage key is the build's key.
    assert_eq!(k.stages[1].key, k.key);

    let test_only = keys_with(&text, &[], Some("TEST"));
    let used: Vec<usize> = test_only.stages.iter().map(|s| s.index).collect();
    assert_eq!(used, vec![1]);
    assert_ne!(test_only.key, k.key);
}

/// Regression: `FROM binaries-$TARGETOS` resolved to `binaries-`, so the real stage and the build
/// stage it copies from were left out of the key.
#[test]
fn platform_selected_stage_and_its_build_stage_are_in_the_key() {
    let text = sample("platform-stages.Dockerfile");
    let names = |k: &CacheKeys| -> Vec<Option<String>> {
        k.stages.iter().map(|s| s.name.clone()).collect()
    };
    let on = |os: &str| key::compute(&text, &BTreeMap::new(), None, &Platform::new(os, "amd64"));
    let linux = on("linux").unwrap();
    assert_eq!(
        names(&linux),
        [
            Some("build".into()),
            Some("binaries-linux".into()),
            Some("binaries".into())
        ]
    );
    assert!(
        linux
            .instructions
            .contains(&"ARG TARGETOS=\"linux\" TARGETARCH=\"amd64\"".into())
    );
    let windows = on("windows").unwrap();
    assert_eq!(names(&windows)[1], Some("binaries-windows".into()));
    assert_ne!(linux.key, windows.key);
    // `ENV C trailing\\` ends its line: the LABEL is an instruction of its own.
    assert_eq!(
        &linux.instructions[linux.instructions.len() - 2..],
        ["ENV C trailing\\\\", "LABEL after=continuation"]
    );
}

#[test]
fn builder_stage_key_equals_building_it_as_target_and_its_prefixes_lead_the_chain() {
    let text = sample("go-multistage.Dockerfile");
    let k = keys(&text);
    let builder = &k.stages[0];
    assert_eq!(builder.name.as_deref(), Some("builder"));
    let as_target = keys_with(&text, &[], Some("builder"));
    assert_eq!(builder.key, as_target.key);
    assert_eq!(builder.prefixes, as_target.prefixes);
    assert_eq!(builder.prefixes_len, builder.prefixes.len());
    assert_eq!(
        &k.prefixes[..builder.prefixes_len],
        builder.prefixes.as_slice()
    );
}

#[test]
fn version_build_arg_changes_the_key_from_its_arg_on() {
    let text = sample("go-multistage.Dockerfile");
    let dev = keys(&text);
    let release = keys_with(&text, &[("VERSION", "1.4.2")], None);
    assert_diverge_at(&dev, &release, position(&dev, "ARG VERSION"));
    assert!(
        release
            .instructions
            .contains(&"ARG VERSION=\"1.4.2\"".to_string())
    );
}

#[test]
fn global_build_arg_changes_every_prefix() {
    let text = sample("go-multistage.Dockerfile");
    let a = keys(&text);
    let b = keys_with(&text, &[("GO_VERSION", "1.23")], None);
    assert_diverge_at(&a, &b, 0);
}

#[test]
fn undeclared_and_predefined_build_args_do_not_change_the_key() {
    let text = sample("go-multistage.Dockerfile");
    let plain = keys(&text);
    let noisy = keys_with(
        &text,
        &[
            ("NOT_DECLARED", "x"),
            ("HTTP_PROXY", "http://proxy:3128"),
            ("no_proxy", "localhost"),
        ],
        None,
    );
    assert_eq!(plain, noisy);
    // A declared proxy arg counts, as in Docker's own cache.
    let declared = "FROM scratch\nARG HTTP_PROXY\nRUN make\n";
    assert_ne!(
        keys(declared).key,
        keys_with(declared, &[("HTTP_PROXY", "http://proxy:3128")], None).key
    );
}

#[test]
fn node_app_final_stage_depends_on_deps_and_build() {
    let text = sample("node-app.Dockerfile");
    let k = keys(&text);
    let used: Vec<usize> = k.stages.iter().map(|s| s.index).collect();
    assert_eq!(used, vec![0, 1, 2]);
    assert!(k.instructions.contains(
        &"LABEL org.opencontainers.image.title=\"web\" org.opencontainers.image.source=\"https://example.com/acme/web\""
            .to_string()
    ));
    // `deps` is first in file order, so its chain is a prefix of the whole build's.
    assert_eq!(k.stages[0].prefixes_len, k.stages[0].prefixes.len());
    // `build` does not depend on `deps`: its own chain differs from the build's from its FROM on.
    let build = &k.stages[1];
    assert_eq!(
        build.prefixes_len, 0,
        "no global ARGs, different first FROM"
    );
    assert_eq!(build.key, keys_with(&text, &[], Some("build")).key);
}

#[test]
fn python_heredoc_bodies_are_part_of_the_key() {
    let text = sample("python-heredoc.Dockerfile");
    let df = dockerfile::parse(&text).unwrap();
    let stage = &df.stages[0];
    let run = &stage.instructions[2];
    assert_eq!(run.keyword, "RUN");
    assert_eq!(run.heredocs[0].body.lines().count(), 4);
    let conf = stage
        .instructions
        .iter()
        .find(|i| i.args.starts_with("<<-\"CONF\""))
        .expect("COPY heredoc");
    assert_eq!(conf.heredocs[0].body, "[server]\nport = ${PORT}\n");
    assert!(!conf.heredocs[0].expand);
    assert!(
        stage
            .instructions
            .iter()
            .any(|i| i.heredocs.iter().any(|h| h.name == "PY"))
    );

    let a = keys(&text);
    let changed = text.replace("apt-get update\n", "apt-get update -q\n");
    let b = keys(&changed);
    assert_diverge_at(&a, &b, position(&a, "RUN <<EOF"));
}

#[test]
fn backtick_escape_dockerfile_joins_continuations_and_keeps_backslashes() {
    let text = sample("windows-backtick.Dockerfile");
    let df = dockerfile::parse(&text).unwrap();
    assert_eq!(df.escape, '`');
    let s = &df.stages[0];
    assert_eq!(s.instructions[0].keyword, "SHELL");
    assert_eq!(s.instructions[1].args, "C:\\app");
    assert_eq!(
        s.instructions[2].args,
        "Invoke-WebRequest -Uri https://example.com/tool.zip -OutFile C:\\tool.zip ; \
         Expand-Archive C:\\tool.zip -DestinationPath C:\\tool ; Remove-Item C:\\tool.zip"
    );
    assert_eq!(s.instructions[3].args, "bin\\ C:\\app\\");
    assert_eq!(s.instructions.len(), 6);
}

#[test]
fn arg_before_from_is_global_and_app_version_changes_the_key_from_line_two() {
    let text = sample("arg-before-from.Dockerfile");
    let df = dockerfile::parse(&text).unwrap();
    assert_eq!(df.global_args.len(), 2);
    assert_eq!(df.stages[0].base, "${BASE_IMAGE}");
    let k = keys(&text);
    assert_eq!(
        &k.instructions[..4],
        &[
            "ARG BASE_IMAGE=\"debian:bookworm-slim\"",
            "ARG APP_VERSION",
            "FROM ${BASE_IMAGE}",
            "ARG APP_VERSION",
        ]
    );
    assert!(
        k.instructions
            .contains(&"ONBUILD RUN make -C /app/src".to_string())
    );
    let v2 = keys_with(&text, &[("APP_VERSION", "2.0")], None);
    assert_eq!(
        v2.instructions[3], "ARG APP_VERSION=\"2.0\"",
        "inherits the build arg"
    );
    assert_diverge_at(&k, &v2, 1);
}

#[test]
fn comments_blank_lines_continuations_and_case_do_not_change_the_key() {
    let a = "FROM alpine:3.20\nRUN apk add curl git\nCOPY . /app\nCMD [\"app\"]\n";
    let b = "# build the app\n\nfrom   alpine:3.20\n\n# tools\nrun apk add \\\n    # the fetcher\n    curl \\\n\n    git\n\
             copy  .   /app\ncmd [ \"app\" ]\n";
    assert_eq!(keys(a), keys(b));
}

#[test]
fn changing_the_last_instruction_keeps_all_prefixes_but_the_last() {
    let a = keys("FROM scratch\nCOPY busybox /bin/busybox\nRUN echo one\nCMD [\"cat\", \"/a\"]\n");
    let b = keys("FROM scratch\nCOPY busybox /bin/busybox\nRUN echo one\nCMD [\"cat\", \"/b\"]\n");
    assert_diverge_at(&a, &b, 3);
}

#[test]
fn appending_an_instruction_keeps_every_earlier_prefix() {
    let base = "FROM scratch\nCOPY busybox /bin/busybox\nRUN echo one\n";
    let a = keys(base);
    let b = keys(&format!("{base}RUN echo changed > /changed.txt\n"));
    assert_eq!(&b.prefixes[..a.prefixes.len()], a.prefixes.as_slice());
    assert_ne!(a.key, b.key);
}

#[test]
fn stages_not_needed_by_the_target_do_not_change_its_key() {
    let a = "FROM scratch AS unused\nRUN one\nFROM scratch AS app\nRUN app\n";
    let b = "FROM scratch AS unused\nRUN two\nFROM scratch AS app\nRUN app\n";
    assert_eq!(keys(a).key, keys(b).key);
    assert_ne!(
        keys_with(a, &[], Some("unused")).key,
        keys_with(b, &[], Some("unused")).key
    );
}

#[test]
fn target_naming_the_last_stage_is_the_same_build_as_no_target() {
    let text = sample("go-multistage.Dockerfile").replace(
        "FROM alpine:${ALPINE_VERSION}",
        "FROM alpine:${ALPINE_VERSION} AS final",
    );
    assert_eq!(keys(&text).key, keys_with(&text, &[], Some("Final")).key);
}

#[test]
fn unknown_target_lists_the_stage_names() {
    let text = sample("go-multistage.Dockerfile");
    let err = key::compute(&text, &BTreeMap::new(), Some("nosuchstage"), &linux()).unwrap_err();
    assert_eq!(
        err,
        KeyError::UnknownTarget {
            target: "nosuchstage".into(),
            stages: vec!["builder".into(), "test".into()],
        }
    );
    let msg = err.to_string();
    assert!(
        msg.contains("nosuchstage") && msg.contains("`builder`, `test`"),
        "{msg}"
    );
    let msg = key::compute("FROM scratch\n", &BTreeMap::new(), Some("x"), &linux())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("no named stages"), "{msg}");
}

#[test]
fn bad_input_errors_name_the_line() {
    let cases: &[(&str, usize)] = &[
        ("FROM scratch\nRUN make\nCOPPY a b\n", 3),
        ("# comment\nRUN make\nFROM scratch\n", 2),
        ("FROM scratch\nRUN <<EOF\nmake\n", 2),
        ("FROM scratch\n\nCOPY --chwon=1 a b\n", 3),
        ("FROM a AS x\nRUN \\\n  make\nFROM b AS x\n", 4),
    ];
    for (text, line) in cases {
        let err = key::compute(text, &BTreeMap::new(), None, &linux()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("line {line}:")),
            "{text:?}: error should name line {line}: {msg}"
        );
    }
    assert_eq!(
        key::compute("", &BTreeMap::new(), None, &linux()).unwrap_err(),
        KeyError::Parse(ParseError::Empty)
    );
    assert_eq!(
        key::compute("ARG X=1\n", &BTreeMap::new(), None, &linux()).unwrap_err(),
        KeyError::Parse(ParseError::NoFrom)
    );
}
