import EpisodeLog
import FakeUpstream
import Foundation
import GatewayTrainer
import Logging
import TrafficLog
import TrafficLogPostgres
import XCTest

/// `gateway-train rollout|train|export --db` with a `postgres://` URL (the server of
/// scripts/with-postgres.sh; without it this test fails, it never skips): the same episodes in
/// PostgreSQL and in SQLite give the same selection, the same export and, for the same seed,
/// the same weights.
final class TrainFromPostgresTests: XCTestCase {
    typealias Run = TrainCLITests.Run

    /// The built `gateway-train`, as TrainCLITests runs it.
    func run(_ args: [String]) throws -> Run { try TrainCLITests.runTrainer(args) }

    func testSameSeedTrainsIdenticalWeightsFromSQLiteAndPostgres() async throws {
        guard let admin = ProcessInfo.processInfo.environment["GATEWAY_TEST_POSTGRES_URL"], !admin.isEmpty else {
            XCTFail("GATEWAY_TEST_POSTGRES_URL is not set: run the tests through scripts/test.sh (it starts PostgreSQL)")
            return
        }
        let cases = try RolloutExportTests.cases()
        let fake = try await FakeUpstream(script: RolloutExportTests.script(cases))
        let tmp = try TempDir()
        let dataset = tmp.url.appendingPathComponent("data.jsonl")
        let lines = try cases.prefix(2).map { c in
            String(decoding: try JSONEncoder().encode(DatasetItem(question: c.question, answers: [c.final_answer ?? ""])), as: UTF8.self)
        }
        try (lines.joined(separator: "\n") + "\n").write(to: dataset, atomically: true, encoding: .utf8)
        let policy = Fixtures.model("promptr1-tiny").path
        let name = "train_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased().prefix(16)
        let pg = try await PostgresAdmin.createDatabase(named: String(name), adminURL: admin)
        let sqlite = tmp.path("traffic.sqlite")

        // Rollout straight into PostgreSQL.
        let upstream = ["--upstream-url", fake.baseURL, "--api-key-env", "TEST_UPSTREAM_KEY", "--upstream-model", "gpt-4o-mini"]
        let r = try run(
            [
                "rollout", "--dataset", dataset.path, "--group-size", "2", "--policy", policy, "--db", pg,
                "--max-tokens-per-turn", "200", "--concurrency", "2", "--seed", "3",
            ] + upstream)
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertFalse((r.out + r.err).contains(URLComponents(string: pg)?.password ?? "\u{0}"), "the password is not printed")
        await fake.stop()

        // The same episodes (and feedback) copied into SQLite.
        let source = try await PostgresLogBackend.open(url: pg, logger: Logger(label: "copy"))
        let episodes = try await source.episodes(EpisodeQuery())
        XCTAssertEqual(episodes.count, 4)
        let feedback = try await source.feedback(episodeIDs: episodes.map(\.id))
        let target = try TrafficDatabase(path: sqlite)
        for e in episodes {
            try target.insert(
                episode: e,
                feedback: (feedback[e.id] ?? []).map {
                    FeedbackRecord(episodeID: $0.episodeID, kind: $0.kind, value: $0.value, source: $0.source, createdAt: $0.createdAt)
                })
        }
        try await source.close()
        XCTAssertEqual(try target.episodes(EpisodeQuery()), episodes)

        var digests: [String] = []
        var exports: [Data] = []
        var manifests: [[String: Any]] = []
        for (i, db) in [sqlite, pg].enumerated() {
            let out = tmp.path("ckpt-\(i)")
            let t = try run([
                "train", "--db", db, "--base", policy, "--out", out, "--lora-rank", "4", "--lora-alpha", "8",
                "--lora-targets", "q_proj,v_proj", "--lr", "1e-3", "--grad-accum", "2", "--epochs", "2", "--seed", "5",
                "--route", "rollout",
            ])
            XCTAssertEqual(t.status, 0, t.err)
            digests.append(try CheckpointHash.weightsSHA256(directory: URL(fileURLWithPath: out)))
            let manifest = try XCTUnwrap(
                try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/manifest.json"))) as? [String: Any])
            manifests.append(manifest)
            let exported = tmp.path("episodes-\(i).jsonl")
            let x = try run(["export", "--db", db, "--format", "jsonl", "--out", exported, "--tokenizer", policy])
            XCTAssertEqual(x.status, 0, x.err)
            exports.append(try Data(contentsOf: URL(fileURLWithPath: exported)))
        }
        XCTAssertEqual(digests[0], digests[1], "same episodes, same seed: the same weights from either backend")
        XCTAssertNotEqual(digests[0], try CheckpointHash.weightsSHA256(directory: Fixtures.model("promptr1-tiny")), "training changed them")
        XCTAssertEqual(manifests[0]["episode_ids"] as? [String], manifests[1]["episode_ids"] as? [String])
        XCTAssertEqual(manifests[0]["kl_after"] as? Double, manifests[1]["kl_after"] as? Double)
        XCTAssertEqual(exports[0], exports[1], "the same export from either backend")
        XCTAssertFalse(exports[0].isEmpty)
    }
}
