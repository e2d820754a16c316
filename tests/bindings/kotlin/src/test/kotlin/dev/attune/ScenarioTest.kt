package dev.attune

import java.io.File
import java.nio.file.Files
import kotlinx.coroutines.runBlocking
import org.json.JSONObject
import kotlin.test.AfterTest
import kotlin.test.Test
import kotlin.test.assertEquals
import kotlin.test.assertNotEquals
import kotlin.test.assertNotNull
import kotlin.test.assertTrue

/** The story of tests/data/scenario.json through the Kotlin binding, as every binding's test suite tells it. */
class ScenarioTest {
    private val repo = File(System.getProperty("attune.repo"))
    private val model = File(repo, "models/cache/all-minilm-l6-v2").also {
        check(File(it, "manifest.json").exists()) { "the default model is required: run models/fetch" }
    }.path
    private val s = JSONObject(File(repo, "tests/data/scenario.json").readText())
    private val dir = Files.createTempDirectory("attune-kotlin-scenario").toFile()

    @AfterTest
    fun cleanUp() {
        dir.deleteRecursively()
    }

    private fun JSONObject.objects(key: String) = getJSONArray(key).let { a -> (0 until a.length()).map { a.getJSONObject(it) } }

    private suspend fun Personalizer.top(task: String, text: String): Pair<String, PredictionSource> {
        val prediction = predictOne(task, text)
        val probabilities = prediction.labels.map { it.probability }
        assertEquals(probabilities.sortedDescending(), probabilities)
        return prediction.labels.first().label to prediction.source
    }

    @Test
    fun theSharedScenario() = runBlocking {
        val task = s.getString("task")
        val config = Config(databasePath = File(dir, "user.db").path, modelDir = model)
        val replies = s.getJSONObject("replies")
        val repliesTask = replies.getString("task")
        Personalizer.open(config).use { p ->
            assertEquals(s.getInt("dimension").toUInt(), p.dimension())
            s.objects("descriptions").forEach { p.describeLabel(task, it.getString("label"), it.getString("description")) }
            s.objects("zero_shot").forEach {
                assertEquals(it.getString("label") to PredictionSource.ZERO_SHOT, p.top(task, it.getString("text")))
            }

            val examples = s.objects("examples").map { LabelledText(it.getString("text"), it.getString("label")) }
            assertEquals(examples.size.toULong(), p.addExamples(task, examples).inserted)
            val trained = p.train(task, TrainSettings(seed = s.getLong("seed").toULong()))
            assertTrue(trained.promoted, trained.promotionReason)
            assertEquals(s.getJSONArray("descriptions").length().toULong(), trained.classes)
            s.objects("trained").forEach {
                assertEquals(it.getString("label") to PredictionSource.TRAINED_HEAD, p.top(task, it.getString("text")))
            }

            val documents = replies.objects("documents").map { Document(it.getString("key"), it.getString("text")) }
            val query = replies.getString("query")
            val chosen = replies.getString("chosen")
            p.addDocuments(repliesTask, documents)
            val plain = p.search(repliesTask, query, documents.size.toUInt())
            assertNotEquals(chosen, plain.first().key)
            repeat(replies.getInt("rounds")) {
                plain.forEach { p.recordFeedback(repliesTask, Feedback(query, it.key, Signal.Impression)) }
                p.recordFeedback(repliesTask, Feedback(query, chosen, Signal.Click))
            }
            assertEquals(chosen, p.search(repliesTask, query, documents.size.toUInt()).first().key)

            val forgetLabel = s.getString("forget_label")
            val afterForget = s.getJSONObject("after_forget")
            val forgotten = p.forget(task, ForgetScope.Label(forgetLabel))
            assertEquals(afterForget.getLong("examples_forgotten").toULong(), forgotten.examples)
            assertTrue(p.predictOne(task, afterForget.getString("text")).labels.none { it.label == forgetLabel })

            val export = File(dir, "export.json")
            p.exportJson(export.path)
            val exported = export.readText()
            val expectedExport = s.getJSONObject("export")
            assertTrue(expectedExport.getString("contains") in exported)
            assertTrue(expectedExport.getString("lacks") !in exported)
            p.shutdown()
        }

        Personalizer.open(config).use { reopened ->
            val expected = s.getJSONObject("reopened")
            val stats = reopened.stats(task)
            assertEquals(expected.getLong("examples").toULong() to expected.getLong("labels").toULong(), stats.examples to stats.labels)
            assertNotNull(stats.activeHeadVersion)
            val probe = expected.getJSONObject("predict")
            assertEquals(probe.getString("label"), reopened.top(task, probe.getString("text")).first)
            assertEquals(expected.getLong("feedback").toULong(), reopened.stats(repliesTask).feedback)
        }
    }
}
