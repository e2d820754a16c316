// The scenario the Python and Kotlin tests run, in Swift, on the tiny model.
// NOT RUN on Attune's Linux machines (no Swift toolchain): see mobile/ios/README.md.
import Attune
import Foundation
import XCTest

final class AttuneTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent(UUID().uuidString)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: directory)
    }

    private var modelDir: String {
        Bundle.module.url(forResource: "tiny-model", withExtension: nil)!.path
    }

    private func open(_ name: String, key: EncryptionKey? = nil) throws -> Personalizer {
        try Personalizer.open(config: Config(
            databasePath: directory.appendingPathComponent(name).path, modelDir: modelDir, encryptionKey: key))
    }

    final class Recorder: ProgressListener, @unchecked Sendable {
        private let lock = NSLock()
        private(set) var events: [Progress] = []
        private(set) var finished: [Bool] = []
        func onProgress(progress: Progress) throws {
            lock.lock(); defer { lock.unlock() }
            events.append(progress)
        }
        func onFinished(succeeded: Bool) throws {
            lock.lock(); defer { lock.unlock() }
            finished.append(succeeded)
        }
    }

    func testEndToEndScenarioPersistsAcrossReopen() throws {
        let examples = (0..<12).map { LabelledText(text: "example text number \($0)", label: $0 % 2 == 0 ? "even" : "odd") }
        var p: Personalizer? = try open("user.db")
        XCTAssertEqual(try p!.addExamples(task: "t", examples: examples).inserted, 12)

        let recorder = Recorder()
        let summary = try p!.train(task: "t", settings: TrainSettings(), listener: recorder, cancel: nil)
        XCTAssertEqual(summary.classes, 2)
        XCTAssertEqual(recorder.finished, [true])

        let prediction = try p!.predict(task: "t", texts: ["example text number 3"], topK: 2)[0]
        XCTAssertEqual(prediction.labels.count, 2)
        XCTAssertEqual(prediction.labels.map { Double($0.probability) }.reduce(0, +), 1.0, accuracy: 1e-4)

        _ = try p!.addDocuments(task: "docs", documents: [
            Document(key: "a", text: "first document"), Document(key: "b", text: "second document"),
        ])
        XCTAssertEqual(try p!.search(task: "docs", query: "document", k: 2).count, 2)
        _ = try p!.recordFeedback(task: "docs", feedback: Feedback(query: "document", documentKey: "b", signal: .click))

        let forgotten = try p!.forget(task: "t", scope: .label(label: "odd"))
        XCTAssertEqual(forgotten.examples, 6)
        p = nil

        let reopened = try open("user.db")
        XCTAssertEqual(try reopened.stats(task: "t").examples, 6)
        XCTAssertEqual(try reopened.stats(task: "docs").feedback, 1)
    }

    func testTypedErrors() throws {
        XCTAssertThrowsError(try Personalizer.open(config: Config(
            databasePath: directory.appendingPathComponent("a.db").path, modelDir: "/nonexistent"))) { error in
            guard case AttuneError.Model = error else { return XCTFail("\(error)") }
        }
        let p = try open("b.db")
        XCTAssertThrowsError(try p.predict(task: "never", texts: ["hi"], topK: 1)) { error in
            guard case AttuneError.UnknownTask = error else { return XCTFail("\(error)") }
        }
        XCTAssertThrowsError(try p.addExamples(task: "t", examples: [LabelledText(text: " ", label: "a")])) { error in
            guard case AttuneError.InvalidInput = error else { return XCTFail("\(error)") }
        }
    }

    func testCancellation() throws {
        let p = try open("c.db")
        let token = CancelToken()
        token.cancel()
        let texts = (0..<100).map { "sentence \($0)" }
        XCTAssertThrowsError(try p.embed(texts: texts, listener: nil, cancel: token)) { error in
            guard case AttuneError.Cancelled = error else { return XCTFail("\(error)") }
        }
    }
}
