package dev.attune

import java.io.File
import java.nio.file.Files
import java.util.concurrent.Callable
import java.util.concurrent.CopyOnWriteArrayList
import java.util.concurrent.Executors
import java.util.concurrent.TimeUnit
import kotlin.test.AfterTest
import kotlin.test.Test
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertFalse
import kotlin.test.assertNotEquals
import kotlin.test.assertNotNull
import kotlin.test.assertTrue

/** The Kotlin binding Android apps use, end to end on the JVM, over the real library, model and SQLite. */
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

    private fun open(name: String, modelDir: String = model, key: EncryptionKey? = null) =
        Personalizer.open(Config(databasePath = File(dir, name).path, modelDir = modelDir, encryptionKey = key))

    private val examples = mapOf(
        "weather" to listOf(
            "will it rain tomorrow", "how hot is it outside today", "is there snow in the forecast",
            "do I need an umbrella this afternoon", "what's the temperature this weekend", "is it going to be windy tonight",
        ),
        "music" to listOf(
            "play some jazz", "put on my running playlist", "skip this song",
            "turn the volume up on the music", "play the latest album by my favourite band", "shuffle my liked songs",
        ),
        "alarm" to listOf(
            "wake me up at seven", "set an alarm for 6 am", "cancel my morning alarm",
            "snooze the alarm for ten minutes", "remind me to get up at half past six", "change tomorrow's alarm to eight",
        ),
    ).flatMap { (label, texts) -> texts.map { LabelledText(text = it, label = label) } }

    private val replies = listOf(
        "on-my-way" to "I'm on my way, see you soon",
        "running-late" to "Sorry, running ten minutes late",
        "call-later" to "Can't talk now, I'll call you later",
        "thanks" to "Thank you so much!",
        "sounds-good" to "Sounds good to me",
    ).map { (key, text) -> Document(key = key, text = text) }

    /** Records progress events and the threads they arrive on. */
    private class Recorder(val cancelOnFirst: CancelToken? = null) : ProgressListener {
        val events = CopyOnWriteArrayList<Progress>()
        val threads = CopyOnWriteArrayList<String>()
        val finished = CopyOnWriteArrayList<Boolean>()
        override fun onProgress(progress: Progress) {
            events.add(progress)
            threads.add(Thread.currentThread().name)
            cancelOnFirst?.cancel()
        }
        override fun onFinished(succeeded: Boolean) {
            finished.add(succeeded)
        }
    }

    @Test
    fun endToEndScenarioWithProgressFromABackgroundThread() {
        val p = open("user.db")
        assertEquals(384u, p.dimension())
        val added = p.addExamples("intents", examples)
        assertEquals(18uL, added.inserted)
        assertEquals(mapOf("weather" to 6uL, "music" to 6uL, "alarm" to 6uL),
            p.labels("intents").associate { it.label to it.examples })

        // Training runs off the main thread, as an app must run it.
        val recorder = Recorder()
        val worker = Executors.newSingleThreadExecutor { Thread(it, "attune-training") }
        val summary = worker.submit(Callable { p.train("intents", TrainSettings(seed = 7uL), recorder, null) })
            .get(120, TimeUnit.SECONDS)
        worker.shutdown()
        assertTrue(summary.promoted, summary.promotionReason)
        assertEquals(3uL, summary.classes)
        assertTrue(recorder.events.any { it is Progress.Epoch })
        assertEquals(setOf("attune-training"), recorder.threads.toSet())
        assertEquals(listOf(true), recorder.finished.toList())

        val predictions = p.predict("intents", listOf("is it sunny tomorrow", "play something relaxing"), 3u)
        assertEquals(listOf("weather", "music"), predictions.map { it.labels.first().label })
        predictions.forEach { prediction ->
            assertEquals(PredictionSource.TRAINED_HEAD, prediction.source)
            assertEquals(1.0, prediction.labels.sumOf { it.probability.toDouble() }, 1e-4)
        }

        // Reply suggestions: the chosen reply is the feedback.
        p.addDocuments("replies", replies)
        val plain = p.search("replies", "where are you?", 5u)
        assertNotEquals("running-late", plain.first().key)
        repeat(5) {
            plain.forEach { hit -> p.recordFeedback("replies", Feedback("where are you?", hit.key, Signal.Impression)) }
            p.recordFeedback("replies", Feedback("where are you?", "running-late", Signal.Click))
        }
        assertEquals("running-late", p.search("replies", "where are you?", 5u).first().key)

        val forgotten = p.forget("intents", ForgetScope.Label("alarm"))
        assertEquals(6uL, forgotten.examples)
        val after = p.predict("intents", listOf("wake me up at seven"), 3u).single()
        assertFalse(after.labels.any { it.label == "alarm" })
        p.close()

        val reopened = open("user.db")
        val stats = reopened.stats("intents")
        assertEquals(12uL, stats.examples)
        assertNotNull(stats.activeHeadVersion)
        assertEquals("music", reopened.predict("intents", listOf("put on some music"), 1u).single().labels.first().label)
        assertEquals(30uL, reopened.stats("replies").feedback)
        reopened.close()
    }

    @Test
    fun typedErrors() {
        val badModel = assertFailsWith<AttuneException.Model> { open("a.db", modelDir = File(dir, "nothing").path) }
        assertTrue(badModel.message!!.contains("manifest"))

        val p = open("b.db", modelDir = tinyModel)
        assertFailsWith<AttuneException.UnknownTask> { p.predict("never", listOf("hi"), 1u) }
        p.addExamples("empty", listOf(LabelledText("x", "a")))
        p.forget("empty", ForgetScope.Label("a"))
        assertFailsWith<AttuneException.NotTrained> { p.predict("empty", listOf("hi"), 1u) }
        p.addExamples("t", listOf(LabelledText("x", "a")))
        assertFailsWith<AttuneException.InvalidInput> { p.addExamples("t", listOf(LabelledText("  ", "a"))) }
        assertEquals(1uL, p.stats("t").examples)
        p.close()

        val secret = EncryptionKey.Passphrase("correct horse battery staple")
        open("secret.db", tinyModel, secret).use { it.addExamples("t", listOf(LabelledText("private words", "a"))) }
        assertFailsWith<AttuneException.EncryptionKey> { open("secret.db", tinyModel, EncryptionKey.Passphrase("wrong")) }
        assertFailsWith<AttuneException.EncryptionKey> { open("secret.db", tinyModel) }
        assertFailsWith<AttuneException.EncryptionKey> { open("b.db", tinyModel, EncryptionKey.Raw(ByteArray(32) { it.toByte() })) }
        open("secret.db", tinyModel, secret).use { assertEquals(1uL, it.stats("t").examples) }
    }

    @Test
    fun cancellationFromTheListener() {
        open("c.db", modelDir = tinyModel).use { p ->
            val texts = (0 until 300).map { "sentence number $it about things" }
            val token = CancelToken()
            val recorder = Recorder(cancelOnFirst = token)
            assertFailsWith<AttuneException.Cancelled> { p.embed(texts, recorder, token) }
            assertEquals(listOf(false), recorder.finished.toList())
            assertEquals(300, p.embed(texts, null, null).size)
        }
    }

    @Test
    fun callsFromManyThreadsAtOnce() {
        open("threads.db").use { p ->
            p.addExamples("intents", examples)
            p.train("intents", TrainSettings(), null, null)
            p.addDocuments("docs", replies)
            val pool = Executors.newFixedThreadPool(5)
            val readers = (0 until 4).map { n ->
                pool.submit {
                    repeat(15) { i ->
                        val top = p.predict("intents", listOf("is it raining in city $n $i"), 1u).single().labels.first()
                        assertEquals("weather", top.label)
                        assertEquals(3, p.search("docs", "late for the meeting $n $i", 3u).size)
                    }
                }
            }
            val writer = pool.submit {
                repeat(20) { i -> p.addExamples("intents", listOf(LabelledText("play track $i", "music"))) }
                p.train("intents", TrainSettings(), null, null)
            }
            (readers + writer).forEach { it.get(120, TimeUnit.SECONDS) }
            pool.shutdown()
            assertEquals(38uL, p.stats("intents").examples)
        }
    }
}
