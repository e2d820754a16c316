import Attune

/// Learns intents from the user's own messages, then routes a new one.
func routeMessage(databasePath: String, modelDir: String, message: String) async throws -> String? {
    let attune = try await Personalizer.open(config: Config(databasePath: databasePath, modelDir: modelDir))
    defer { attune.close() }
    try await attune.describeLabel(task: "intents", label: "weather", description: "a question about the weather forecast")
    try await attune.describeLabel(task: "intents", label: "music", description: "a request to play music")
    _ = try await attune.addExamples(task: "intents", examples: [
        LabelledText(text: "will it rain tomorrow", label: "weather"),
        LabelledText(text: "play some jazz", label: "music"),
    ])
    let summary = try await attune.train(task: "intents")
    precondition(summary.promoted, summary.promotionReason)
    do {
        _ = try await attune.predictOne(task: "unknown-task", text: "hi")
    } catch AttuneError.UnknownTask {
        // Typed errors: branch on the case.
    }
    let best = try await attune.predictOne(task: "intents", text: message)
    return best.abstain ? nil : best.labels.first?.label
}
