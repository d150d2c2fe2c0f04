"""Unit tests of deploy/validate.py's helpers (run by validate.py itself, or
`target/deploy-venv/bin/python -m unittest discover -s deploy -p 'test_*.py'`)."""

import unittest

import validate as v


class DockerignoreTest(unittest.TestCase):
    PATS = ["target", "**/node_modules", "web/test-results", ".git", "*.svg.tmp"]

    def test_excluded_paths_and_their_children(self) -> None:
        for path in ("target", "target/debug/central", "web/node_modules/x.js",
                     "a/b/node_modules", ".git/HEAD", "web/test-results/r.json", "plot.svg.tmp"):
            self.assertTrue(v.ignored(path, self.PATS), path)

    def test_kept_paths(self) -> None:
        for path in ("Cargo.toml", "central/src/main.rs", "web/index.html", "targets", "web/tests/a.js"):
            self.assertFalse(v.ignored(path, self.PATS), path)

    def test_negation_reincludes(self) -> None:
        self.assertFalse(v.ignored("docs/keep.md", ["docs", "!docs/keep.md"]))
        self.assertTrue(v.ignored("docs/other.md", ["docs", "!docs/keep.md"]))


class HelpTest(unittest.TestCase):
    HELP = """Usage: signal-node [OPTIONS]

Options:
      --id <ID>              unique node id [env: SIGNAL_ID=]
      --secret <SECRET>      verifies tickets [env: SIGNAL_SECRET]
      --dev-auth             also accept /ws?user=ID [env: SIGNAL_DEV_AUTH=]
  -h, --help                 Print help
"""

    def test_flags_and_envs(self) -> None:
        flags, envs = v.help_flags(self.HELP)
        self.assertEqual(flags, {"--id", "--secret", "--dev-auth", "--help"})
        self.assertEqual(envs, {"SIGNAL_ID", "SIGNAL_SECRET", "SIGNAL_DEV_AUTH"})

    def test_missing(self) -> None:
        used = {"flags": {"--id", "--weight"}, "envs": {"SIGNAL_SECRET", "SIGNAL_WEIGHT"}, "where": set()}
        self.assertEqual(v.missing_in_help(used, self.HELP), ["--weight", "SIGNAL_WEIGHT"])

    def test_usage_keeps_only_the_binary_prefix(self) -> None:
        usage: dict = {}
        v.usage_from_command("central", ["--http-listen=0.0.0.0:8080", "--log-json", "value"],
                             ["CENTRAL_SECRET", "RUST_LOG", "SIGNAL_SECRET"], "here", usage)
        self.assertEqual(usage["central"]["flags"], {"--http-listen", "--log-json"})
        self.assertEqual(usage["central"]["envs"], {"CENTRAL_SECRET"})

    def test_binary_of(self) -> None:
        self.assertEqual(v.binary_of(["/usr/local/bin/signal-node", "--id=x"]), "signal-node")
        self.assertIsNone(v.binary_of(["redis-server"]))
        self.assertIsNone(v.binary_of([]))


class DockerfileTest(unittest.TestCase):
    def test_stages_join_continuations(self) -> None:
        text = "FROM a AS b\nRUN x \\\n  && y\n# c\nFROM d\nUSER 1:1\nCMD [\"central\"]\n"
        stages = v.dockerfile_stages(text)
        self.assertEqual(len(stages), 2)
        self.assertEqual(stages[0][1][0], "RUN")
        self.assertIn("&& y", stages[0][1][1])
        self.assertEqual(stages[1][-1], ("CMD", '["central"]'))


class LoopbackTest(unittest.TestCase):
    def test_rewrites_listen_peer_and_published_addresses(self) -> None:
        services = {"central": {"ports": [{"published": 8080, "target": 8080}]},
                    "node-1": {"ports": ["8091:8090"]}, "redis": {}}
        lb = v.Loopback(services)
        listen = lb.rewrite("node-1", "--listen=0.0.0.0:8090")
        advertised = lb.rewrite("node-1", "--advertise-url=ws://localhost:8091/ws")
        self.assertEqual(listen.split(":")[-1], advertised.split(":")[-1].split("/")[0])
        self.assertTrue(listen.startswith("--listen=127.0.0.1:"))
        grpc = lb.rewrite("central", "--grpc-listen=0.0.0.0:9090")
        dial = lb.rewrite("node-1", "--central=http://central:9090")
        self.assertEqual(grpc.rsplit(":", 1)[1], dial.rsplit(":", 1)[1])
        self.assertTrue(lb.rewrite("central", "redis://redis:6379").startswith("redis://127.0.0.1:"))
        self.assertEqual(lb.rewrite("central", "http://example.com:80/x"), "http://example.com:80/x")
        host = lb.rewrite("loadgen", "--central=http://127.0.0.1:8080")
        self.assertEqual(host.rsplit(":", 1)[1], str(lb.port("central", 8080)))


class MergeTest(unittest.TestCase):
    def test_deep_merge_does_not_touch_inputs(self) -> None:
        base = {"a": {"b": 1, "c": 2}}
        out = v.deep_merge(base, {"a": {"b": 3}})
        self.assertEqual(out, {"a": {"b": 3, "c": 2}})
        self.assertEqual(base, {"a": {"b": 1, "c": 2}})


if __name__ == "__main__":
    unittest.main()
