// The story of tests/data/scenario.json through the Swift binding, as every
// binding's test suite tells it, on the compiled default model.
// NOT RUN on Attune's Linux machines (no Swift toolchain): see mobile/ios/README.md.
import Attune
import Foundation
import XCTest

struct Scenario: Decodable {
    struct Described: Decodable { let label: String; let description: String }
    struct Labelled: Decodable { let text: String; let label: String }
    struct Reply: Decodable { let key: String; let text: String }
    struct Replies: Decodable { let task: String; let documents: [Reply]; let query: String; let chosen: String; let rounds: Int }
    struct AfterForget: Decodable { let text: String; let examples_forgotten: UInt64 }
    struct Export: Decodable { let contains: String; let lacks: String }
    struct Reopened: Decodable { let examples: UInt64; let labels: UInt64; let feedback: UInt64; let predict: Labelled }
    let dimension: UInt32
    let task: String
    let descriptions: [Described]
    let zero_shot: [Labelled]
    let examples: [Labelled]
    let seed: UInt64
    let trained: [Labelled]
    let replies: Replies
    let forget_label: String
    let after_forget: AfterForget
    let export: Export
    let reopened: Reopened
}

final class ScenarioTests: XCTestCase {
    private func resource(_ name: String) -> URL {
        Bundle.module.url(forResource: name, withExtension: nil)!
    }

    private func top(_ p: Personalizer, _ task: String, _ text: String) async throws -> (String, PredictionSource) {
        let prediction = try await p.predictOne(task: task, text: text)
        let probabilities = prediction.labels.map { $0.probability }
        XCTAssertEqual(probabilities, probabilities.sorted(by: >))
        return (prediction.labels[0].label, prediction.source)
    }

    func testTheSharedScenario() async throws {
        let s = try JSONDecoder().decode(Scenario.self, from: Data(contentsOf: resource("scenario.json")))
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(UUID().uuidString)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let config = Config(databasePath: directory.appendingPathComponent("user.db").path,
                            modelDir: resource("default-model").path)
        let task = s.task
        let r = s.replies

        let p = try await Personalizer.open(config: config)
        XCTAssertEqual(try p.dimension(), s.dimension)
        for d in s.descriptions {
            try await p.describeLabel(task: task, label: d.label, description: d.description)
        }
        for probe in s.zero_shot {
            let (label, source) = try await top(p, task, probe.text)
            XCTAssertEqual(label, probe.label)
            XCTAssertEqual(source, .zeroShot)
        }
        let examples = s.examples.map { LabelledText(text: $0.text, label: $0.label) }
        let added = try await p.addExamples(task: task, examples: examples)
        XCTAssertEqual(added.inserted, UInt64(examples.count))
        let trained = try await p.train(task: task, settings: TrainSettings(seed: s.seed))
        XCTAssertTrue(trained.promoted, trained.promotionReason)
        XCTAssertEqual(trained.classes, UInt64(s.descriptions.count))
        for probe in s.trained {
            let (label, source) = try await top(p, task, probe.text)
            XCTAssertEqual(label, probe.label)
            XCTAssertEqual(source, .trainedHead)
        }

        let documents = r.documents.map { Document(key: $0.key, text: $0.text) }
        _ = try await p.addDocuments(task: r.task, documents: documents)
        let plain = try await p.search(task: r.task, query: r.query, k: UInt32(documents.count))
        XCTAssertNotEqual(plain[0].key, r.chosen)
        for _ in 0..<r.rounds {
            for hit in plain {
                _ = try await p.recordFeedback(task: r.task, feedback: Feedback(query: r.query, documentKey: hit.key, signal: .impression))
            }
            _ = try await p.recordFeedback(task: r.task, feedback: Feedback(query: r.query, documentKey: r.chosen, signal: .click))
        }
        let personal = try await p.search(task: r.task, query: r.query, k: UInt32(documents.count))
        XCTAssertEqual(personal[0].key, r.chosen)

        let forgotten = try await p.forget(task: task, scope: .label(label: s.forget_label))
        XCTAssertEqual(forgotten.examples, s.after_forget.examples_forgotten)
        let after = try await p.predictOne(task: task, text: s.after_forget.text)
        XCTAssertFalse(after.labels.contains { $0.label == s.forget_label })

        let export = directory.appendingPathComponent("export.json")
        try await p.exportJson(path: export.path)
        let exported = try String(contentsOf: export, encoding: .utf8)
        XCTAssertTrue(exported.contains(s.export.contains))
        XCTAssertFalse(exported.contains(s.export.lacks))
        p.close()

        let reopened = try await Personalizer.open(config: config)
        defer { reopened.close() }
        let stats = try reopened.stats(task: task)
        XCTAssertEqual(stats.examples, s.reopened.examples)
        XCTAssertEqual(stats.labels, s.reopened.labels)
        XCTAssertNotNil(stats.activeHeadVersion)
        let (label, _) = try await top(reopened, task, s.reopened.predict.text)
        XCTAssertEqual(label, s.reopened.predict.label)
        XCTAssertEqual(try reopened.stats(task: r.task).feedback, s.reopened.feedback)
    }

    func testTheReadmeSample() async throws {
        let db = FileManager.default.temporaryDirectory.appendingPathComponent(UUID().uuidString + ".db")
        defer { try? FileManager.default.removeItem(at: db) }
        let label = try await routeMessage(databasePath: db.path, modelDir: resource("default-model").path, message: "put on a song")
        XCTAssertEqual(label, "music")
    }
}
