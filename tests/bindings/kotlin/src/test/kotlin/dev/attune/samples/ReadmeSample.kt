package dev.attune.samples

import dev.attune.*

/** Learns intents from the user's own messages, then routes a new one. */
suspend fun routeMessage(databasePath: String, modelDir: String, message: String): String? =
    Personalizer.open(Config(databasePath = databasePath, modelDir = modelDir)).use { attune ->
        attune.describeLabel("intents", "weather", "a question about the weather forecast")
        attune.describeLabel("intents", "music", "a request to play music")
        attune.addExamples("intents", listOf(
            LabelledText("will it rain tomorrow", "weather"),
            LabelledText("play some jazz", "music"),
        ))
        val summary = attune.train("intents", listener = object : ProgressListener {
            override fun onProgress(progress: Progress) { /* a worker thread: post to the UI */ }
            override fun onFinished(succeeded: Boolean) {}
        })
        check(summary.promoted) { summary.promotionReason }
        try {
            attune.predictOne("unknown-task", "hi")
        } catch (e: AttuneException.UnknownTask) {
            // Typed errors: branch on the subclass.
        }
        val best = attune.predictOne("intents", message)
        if (best.abstain) null else best.labels.first().label
    }
