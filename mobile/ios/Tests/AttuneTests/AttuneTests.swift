// The Swift binding at its boundary, on the tiny model: async calls,
// cancellation of a Task, close, interrupt, typed errors, concurrency.
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

    private func open(_ name: String, key: EncryptionKey? = nil) async throws -> Personalizer {
        try await Personalizer.open(config: Config(
            databasePath: directory.appendingPathComponent(name).path, modelDir: modelDir, encryptionKey: key))
    }

    private let examples = (0..<12).map { LabelledText(text: "example text number \($0)", label: $0 % 2 == 0 ? "even" : "odd") }

    /// Records progress; may hold the call at its first event until released.
    final class Recorder: ProgressListener, @unchecked Sendable {
        private let lock = NSLock()
        private(set) var events: [Progress] = []
        private(set) var finished: [Bool] = []
        let reached = DispatchSemaphore(value: 0)
        let release: DispatchSemaphore
        private let hold: Bool
        init(hold: Bool = false) {
            self.hold = hold
            release = DispatchSemaphore(value: 0)
        }
        func onProgress(progress: Progress) throws {
            lock.lock()
            let first = events.isEmpty
            events.append(progress)
            lock.unlock()
            if first {
                reached.signal()
                if hold { _ = release.wait(timeout: .now() + 60) }
            }
        }
        func onFinished(succeeded: Bool) throws {
            lock.lock(); defer { lock.unlock() }
            finished.append(succeeded)
        }
    }

    /// Starts a call in a Task, cancels the Task at the call's first progress event, then lets the call go on.
    /// uniffi's Swift async functions do not observe Task cancellation, so the Task cancels a token.
    private func cancelAtFirstProgress(_ call: @escaping @Sendable (Recorder, CancelToken) async throws -> Void) async -> Recorder {
        let recorder = Recorder(hold: true)
        let token = CancelToken()
        let task = Task {
            try await withTaskCancellationHandler {
                try await call(recorder, token)
            } onCancel: {
                token.cancel()
            }
        }
        _ = await Task.detached { recorder.reached.wait(timeout: .now() + 60) }.value
        task.cancel()
        _ = await task.result
        recorder.release.signal()
        return recorder
    }

    func testCancellingATaskLeavesTheDatabaseAsBefore() async throws {
        let history = directory.appendingPathComponent("history.csv")
        let rows = (0..<3000).map { "message number \($0) about things,\($0 % 2 == 0 ? "a" : "b")" }
        try ("text,label\n" + rows.joined(separator: "\n") + "\n").write(to: history, atomically: true, encoding: .utf8)
        let p = try await open("cancel.db")
        _ = try await p.addExamples(task: "t", examples: examples)
        let before = (try p.stats(task: "t"), try p.labels(task: "t"))
        _ = await cancelAtFirstProgress { _ = try await p.importFile(task: "t", path: history.path, listener: $0, cancel: $1) }
        let training = await cancelAtFirstProgress {
            _ = try await p.train(task: "t", settings: TrainSettings(head: .mlp, epochs: 50), listener: $0, cancel: $1)
        }
        p.close() // waits for the cancelled calls to stop
        XCTAssertEqual(training.finished, [false])
        let reopened = try await open("cancel.db")
        defer { reopened.close() }
        XCTAssertEqual(try reopened.stats(task: "t"), before.0)
        XCTAssertEqual(try reopened.labels(task: "t"), before.1)
        XCTAssertEqual(try reopened.heads(task: "t").count, 0)
        let imported = try await reopened.importFile(task: "t", path: history.path)
        XCTAssertEqual(imported.inserted, 3000)
    }

    func testCloseAndInterrupt() async throws {
        let p = try await open("closed.db")
        _ = try await p.addExamples(task: "t", examples: examples)
        let recorder = Recorder(hold: true)
        let embedding = Task { try await p.embed(texts: (0..<2000).map { "text \($0)" }, listener: recorder) }
        _ = await Task.detached { recorder.reached.wait(timeout: .now() + 60) }.value
        p.interrupt()
        recorder.release.signal()
        do {
            _ = try await embedding.value
            XCTFail("an interrupted call must fail")
        } catch AttuneError.Cancelled {}
        let vectors = try await p.embed(texts: ["still open"])
        XCTAssertEqual(vectors.count, 1)

        p.close()
        p.close() // twice is harmless
        XCTAssertThrowsError(try p.stats(task: "t")) { error in
            guard case AttuneError.Closed = error else { return XCTFail("\(error)") }
        }
        do {
            _ = try await p.predictOne(task: "t", text: "hi")
            XCTFail("a closed personalizer must refuse calls")
        } catch AttuneError.Closed {}
    }

    func testSixteenConcurrentTasks() async throws {
        let p = try await open("many.db")
        defer { p.close() }
        _ = try await p.addExamples(task: "t", examples: examples)
        _ = try await p.train(task: "t")
        try await withThrowingTaskGroup(of: Int.self) { group in
            for n in 0..<12 {
                group.addTask { try await p.predictOne(task: "t", text: "example text number \(n)").labels.count }
            }
            for n in 0..<4 {
                group.addTask { Int(try await p.addExamples(task: "t", examples: [LabelledText(text: "extra \(n)", label: "odd")]).inserted) }
            }
            var total = 0
            for try await value in group { total += value }
            XCTAssertEqual(total, 12 * 2 + 4)
        }
        XCTAssertEqual(try p.stats(task: "t").examples, 16)
    }

    func testTypedErrors() async throws {
        do {
            _ = try await Personalizer.open(config: Config(databasePath: directory.appendingPathComponent("a.db").path,
                                                           modelDir: directory.appendingPathComponent("nothing").path))
            XCTFail("a missing model must fail")
        } catch AttuneError.Model(let reason) {
            XCTAssertTrue(reason.contains("manifest"))
        }
        let p = try await open("b.db")
        defer { p.close() }
        do {
            _ = try await p.predictOne(task: "never", text: "hi")
            XCTFail("an unknown task must fail")
        } catch AttuneError.UnknownTask {}
        do {
            _ = try await p.addExamples(task: "t", examples: [LabelledText(text: "  ", label: "a")])
            XCTFail("blank text must fail")
        } catch AttuneError.InvalidInput {}
        XCTAssertThrowsError(try p.stats(task: "t"))
    }

    func testFederatedRoundsAtTheBoundary() async throws {
        let model = try await Model.load(modelDir: modelDir)
        var devices: [Personalizer] = []
        for i in 0..<2 {
            let p = try await Personalizer.openWithModel(
                databasePath: directory.appendingPathComponent("device-\(i).db").path, model: model)
            _ = try await p.addExamples(task: "t", examples: examples.enumerated().filter { $0.offset % 2 == i }.map { $0.element })
            devices.append(p)
        }
        defer { devices.forEach { $0.close() } }
        let labels = Array(Set(examples.map { $0.label })).sorted()
        var shared = try sharedModelZeros(fingerprint: model.fingerprint(), labels: labels, dimension: model.dimension())
        for round in 0..<2 {
            var updates: [FederatedUpdate] = []
            for p in devices {
                updates.append(try await p.federatedFit(task: "t", shared: shared, settings: FederatedSettings(seed: UInt64(round))))
            }
            // The test plays the server: the example-weighted mean (Flower's FedAvg in production).
            let total = Float(updates.map { $0.examples }.reduce(0, +))
            func mean(_ pick: (SharedModel) -> [Float]) -> [Float] {
                pick(updates[0].model).indices.map { k in
                    updates.map { pick($0.model)[k] * Float($0.examples) / total }.reduce(0, +)
                }
            }
            shared.weights = mean { $0.weights }
            shared.bias = mean { $0.bias }
        }
        // Central privacy: the device bounds its change, the server adds the noise.
        let clipped = try await devices[0].federatedFit(task: "t", shared: shared, settings: FederatedSettings(clipNorm: 0.01))
        let change = zip(clipped.model.weights + clipped.model.bias, shared.weights + shared.bias)
            .map { (a, b) in Double((a - b) * (a - b)) }.reduce(0, +)
        XCTAssertLessThanOrEqual(change.squareRoot(), 0.01 * 1.001)
        XCTAssertNil(clipped.privacyEpsilon)
        let bytes = try sharedModelToBytes(model: shared)
        XCTAssertEqual(try sharedModelFromBytes(bytes: bytes, fingerprint: model.fingerprint()), shared)
        XCTAssertThrowsError(try sharedModelFromBytes(bytes: bytes.prefix(bytes.count / 2), fingerprint: model.fingerprint()))
        let newcomer = try await Personalizer.openWithModel(
            databasePath: directory.appendingPathComponent("newcomer.db").path, model: model)
        defer { newcomer.close() }
        let adopted = try await newcomer.adoptShared(task: "t", shared: shared)
        XCTAssertTrue(adopted.active)
        let prediction = try await newcomer.predictOne(task: "t", text: "example text number 3")
        XCTAssertEqual(prediction.source, .sharedHead)
    }
}
