package dev.attune

import dev.attune.samples.routeMessage
import java.io.File
import java.nio.file.Files
import java.util.concurrent.CopyOnWriteArrayList
import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit
import kotlinx.coroutines.CoroutineStart
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.async
import kotlinx.coroutines.awaitAll
import kotlinx.coroutines.delay
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withContext
import kotlin.test.AfterTest
import kotlin.test.Test
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertFalse
import kotlin.test.assertTrue

/**
 * The Kotlin binding Android apps use, at its boundary, on the JVM over the real library, model and SQLite:
 * suspend calls off the caller's thread, cancellation, shutdown, typed errors, listeners, many coroutines.
 * Ranking quality is the shared scenario's job (ScenarioTest).
 */
class BindingTest {
    private val repo = File(System.getProperty("attune.repo"))
    private val model = File(repo, "models/cache/all-minilm-l6-v2").also {
        check(File(it, "manifest.json").exists()) { "the default model is required: run models/fetch" }
    }.path
    private val tinyModel = File(repo, "models/tiny").path
    private val dir = Files.createTempDirectory("attune-kotlin").toFile()

    @AfterTest
    fun cleanUp() {
        dir.deleteRecursively()
    }

    private fun config(name: String, modelDir: String = tinyModel, key: EncryptionKey? = null) =
        Config(databasePath = File(dir, name).path, modelDir = modelDir, encryptionKey = key)

    private suspend fun open(name: String, modelDir: String = tinyModel, key: EncryptionKey? = null) =
        Personalizer.open(config(name, modelDir, key))

    private val examples = listOf(
        "will it rain tomorrow" to "weather", "how hot is it outside today" to "weather",
        "is there snow in the forecast" to "weather", "do I need an umbrella this afternoon" to "weather",
        "play some jazz" to "music", "put on my running playlist" to "music",
        "skip this song" to "music", "turn the volume up on the music" to "music",
    ).map { (text, label) -> LabelledText(text, label) }

    /** Records progress and its threads; may hold the call at its first event until released. */
    private class Recorder(hold: Boolean = false) : ProgressListener {
        val events = CopyOnWriteArrayList<Progress>()
        val threads = CopyOnWriteArrayList<Thread>()
        val finished = CopyOnWriteArrayList<Boolean>()
        val reached = CountDownLatch(1)
        val release = CountDownLatch(if (hold) 1 else 0)
        override fun onProgress(progress: Progress) {
            events.add(progress)
            threads.add(Thread.currentThread())
            reached.countDown()
            check(release.await(60, TimeUnit.SECONDS)) { "the test never released the call" }
        }
        override fun onFinished(succeeded: Boolean) {
            finished.add(succeeded)
        }
    }

    /** Starts a call, cancels its coroutine at the call's first progress event, then lets the call go on. */
    private suspend fun cancelAtFirstProgress(call: suspend (Recorder) -> Unit): Recorder = coroutineScopeOf {
        val recorder = Recorder(hold = true)
        val job = launch(start = CoroutineStart.UNDISPATCHED) { call(recorder) }
        withContext(Dispatchers.IO) { check(recorder.reached.await(60, TimeUnit.SECONDS)) }
        job.cancel()
        job.join()
        assertTrue(job.isCancelled)
        recorder.release.countDown()
        recorder
    }

    private suspend fun <T> coroutineScopeOf(block: suspend kotlinx.coroutines.CoroutineScope.() -> T): T =
        kotlinx.coroutines.coroutineScope(block)

    @Test
    fun theReadmeSampleRuns() = runBlocking {
        assertEquals("music", routeMessage(File(dir, "readme.db").path, model, "put on a song"))
    }

    @Test
    fun cancellingACoroutineLeavesTheDatabaseAsBefore() = runBlocking {
        val history = File(dir, "history.csv")
        history.writeText("text,label\n" + (0 until 3000).joinToString("\n") { "message number $it about things,${"ab"[it % 2]}" } + "\n")
        val p = open("cancel.db")
        p.addExamples("t", examples)
        val before = Triple(p.stats("t"), p.labels("t"), p.heads("t"))
        cancelAtFirstProgress { p.importFile("t", history.path, it) }
        val training = cancelAtFirstProgress { p.train("t", TrainSettings(head = HeadType.MLP, epochs = 50u), it) }
        p.shutdown() // waits for the cancelled calls to stop
        assertEquals(listOf(false), training.finished.toList())
        open("cancel.db").use { reopened ->
            assertEquals(before, Triple(reopened.stats("t"), reopened.labels("t"), reopened.heads("t")))
            assertEquals(3000uL, reopened.importFile("t", history.path).inserted)
        }
    }

    @Test
    fun sixteenCoroutinesOnOneThread() = runBlocking {
        // runBlocking's single thread runs all of them: a call that blocked it would serialise them.
        open("gather.db", modelDir = model).use { p ->
            p.addExamples("intents", examples)
            p.train("intents")
            val predictions = (0 until 12).map { n -> async { p.predictOne("intents", "is it raining in city $n").labels.first().label } }
            val additions = (0 until 4).map { n -> async { p.addExamples("intents", listOf(LabelledText("play track $n", "music"))).inserted } }
            assertEquals(List(12) { "weather" }, predictions.awaitAll())
            assertEquals(List(4) { 1uL }, additions.awaitAll())
            assertEquals(examples.size.toULong() + 4u, p.stats("intents").examples)
        }
    }

    @Test
    fun theCallersThreadKeepsRunningDuringALongCall() = runBlocking {
        open("ticks.db", modelDir = model).use { p ->
            var ticks = 0
            val ticker = launch { while (true) { ticks++; delay(10) } }
            val started = System.nanoTime()
            val recorder = Recorder()
            p.embed((0 until 400).map { "sentence $it about the weather" }, recorder)
            val seconds = (System.nanoTime() - started) / 1e9
            ticker.cancel()
            assertTrue(seconds > 0.2 && ticks >= seconds / 0.01 * 0.3, "ticks $ticks in $seconds s")
            assertFalse(recorder.threads.any { it == Thread.currentThread() }, "listeners run on the call's thread")
            assertEquals(listOf(true), recorder.finished.toList())
        }
    }

    @Test
    fun shutdownAndInterrupt() = runBlocking {
        val p = open("closed.db")
        p.addExamples("t", examples)
        val recorder = Recorder(hold = true)
        val embedding = async { runCatching { p.embed((0 until 2000).map { "text $it" }, recorder) } }
        withContext(Dispatchers.IO) { check(recorder.reached.await(60, TimeUnit.SECONDS)) }
        p.interrupt()
        recorder.release.countDown()
        assertTrue(embedding.await().exceptionOrNull() is AttuneException.Cancelled)
        assertEquals(1, p.embed(listOf("still open")).size)

        p.shutdown()
        p.shutdown() // twice is harmless
        assertFailsWith<AttuneException.Closed> { p.stats("t") }
        assertFailsWith<AttuneException.Closed> { p.predictOne("t", "play jazz") }
        p.close()
        open("closed.db").use { assertEquals(examples.size.toULong(), it.stats("t").examples) }
    }

    @Test
    fun typedErrors() = runBlocking {
        val badModel = assertFailsWith<AttuneException.Model> { open("a.db", modelDir = File(dir, "nothing").path) }
        assertTrue(badModel.message!!.contains("manifest"))

        open("b.db").use { p ->
            assertFailsWith<AttuneException.UnknownTask> { p.predictOne("never", "hi") }
            p.addExamples("empty", listOf(LabelledText("x", "a")))
            p.forget("empty", ForgetScope.Label("a"))
            assertFailsWith<AttuneException.NotTrained> { p.predictOne("empty", "hi") }
            p.addExamples("t", listOf(LabelledText("x", "a")))
            assertFailsWith<AttuneException.InvalidInput> { p.addExamples("t", listOf(LabelledText("  ", "a"))) }
            assertFailsWith<AttuneException.InvalidInput> { p.predictOne("t", "x", topK = 0u) }
            assertEquals(1uL, p.stats("t").examples)
        }

        val secret = EncryptionKey.Passphrase("correct horse battery staple")
        open("secret.db", key = secret).use { it.addExamples("t", listOf(LabelledText("private words", "a"))) }
        assertFailsWith<AttuneException.EncryptionKey> { open("secret.db", key = EncryptionKey.Passphrase("wrong")) }
        assertFailsWith<AttuneException.EncryptionKey> { open("secret.db") }
        assertFailsWith<AttuneException.EncryptionKey> { open("b.db", key = EncryptionKey.Raw(ByteArray(32) { it.toByte() })) }
        open("secret.db", key = secret).use { assertEquals(1uL, it.stats("t").examples) }
    }

    @Test
    fun typedTrainingResults() = runBlocking {
        open("typed.db").use { p ->
            p.addExamples("t", examples)
            val summary = p.train("t")
            val head = p.heads("t").single()
            assertEquals(summary.head, head.kind)
            assertTrue(summary.candidates.isNotEmpty())
            assertTrue(summary.chosen in summary.candidates.map { it.candidate })
        }
    }

    @Test
    fun adaptingTheTopLayersIsATrainingSetting() = runBlocking {
        // The tiny model has one layer; adaptation takes the top two, so this runs on the default model.
        open("adapt.db", modelDir = model).use { p ->
            p.addExamples("t", examples)
            val frozen = p.train("t", TrainSettings(adapt = AdaptMode.NEVER))
            assertFalse(frozen.adapted)
            val forced = p.train("t", TrainSettings(adapt = AdaptMode.ALWAYS))
            assertTrue(forced.adapted, forced.toString())
            assertEquals(examples.size.toULong(), p.stats("t").trunkStates)
            assertEquals("weather", p.predictOne("t", "is it sunny outside").labels.first().label)
            // A private task never adapts; forcing it is a typed error.
            p.train("t", TrainSettings(dpEpsilon = 8.0))
            assertFailsWith<AttuneException.InvalidInput> { p.train("t", TrainSettings(adapt = AdaptMode.ALWAYS)) }
        }
    }

    @Test
    fun federatedRoundsAtTheBoundary() = runBlocking {
        val model = Model.load(tinyModel)
        val devices = (0 until 2).map { Personalizer.openWithModel(File(dir, "device-$it.db").path, model) }
        devices.forEachIndexed { i, p -> p.addExamples("t", examples.filterIndexed { j, _ -> j % 2 == i }) }
        val labels = examples.map { it.label }.distinct()
        var shared = sharedModelZeros(model.fingerprint(), labels, model.dimension())
        repeat(2) { round ->
            val updates = devices.map { it.federatedFit("t", shared, FederatedSettings(seed = round.toULong())) }
            assertEquals(examples.size.toULong(), updates.sumOf { it.examples })
            // The test plays the server: the example-weighted mean (Flower's FedAvg in production).
            val total = updates.sumOf { it.examples }.toFloat()
            fun mean(pick: (SharedModel) -> List<Float>) = pick(updates[0].model).indices.map { k ->
                updates.sumOf { (pick(it.model)[k] * it.examples.toFloat() / total).toDouble() }.toFloat()
            }
            shared = shared.copy(weights = mean { it.weights }, bias = mean { it.bias })
        }
        // Central privacy: the device bounds its change, the server adds the noise.
        val clipped = devices[0].federatedFit("t", shared, FederatedSettings(clipNorm = 0.01f))
        val change = (clipped.model.weights.zip(shared.weights) + clipped.model.bias.zip(shared.bias))
            .sumOf { (a, b) -> ((a - b) * (a - b)).toDouble() }
        assertTrue(Math.sqrt(change) <= 0.01 * 1.001, "change ${Math.sqrt(change)}")
        assertEquals(null, clipped.privacyEpsilon)
        val bytes = sharedModelToBytes(shared)
        assertEquals(shared, sharedModelFromBytes(bytes, model.fingerprint()))
        assertFailsWith<AttuneException.InvalidInput> { sharedModelFromBytes(bytes.copyOf(bytes.size / 2), model.fingerprint()) }
        Personalizer.openWithModel(File(dir, "newcomer.db").path, model).use { newcomer ->
            assertTrue(newcomer.adoptShared("t", shared).active)
            assertEquals(PredictionSource.SHARED_HEAD, newcomer.predictOne("t", "play some jazz").source)
        }
        devices.forEach { it.shutdown() }
    }
}
