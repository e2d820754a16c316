"""The Python code samples of the README and of the package docstring run
as they are written, so they cannot drift from the API."""

import doctest
import os
import pathlib
import re

import attune

REPO = pathlib.Path(__file__).resolve().parents[3]


def test_the_package_docstring_example(tmp_path, model_dir):
    globs = {"DATABASE_PATH": str(tmp_path / "doc.db"), "MODEL_DIR": model_dir}
    failures, tried = doctest.testmod(attune, extraglobs=globs, report=True)
    assert tried > 0 and failures == 0


def test_the_sync_module_docstring_example(tmp_path, model_dir):
    import attune.sync

    globs = {"DATABASE_PATH": str(tmp_path / "sync-doc.db"), "MODEL_DIR": model_dir}
    failures, tried = doctest.testmod(attune.sync, extraglobs=globs, report=True)
    assert tried > 0 and failures == 0


def test_the_readme_python_sample(tmp_path, model_dir, monkeypatch):
    samples = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert samples, "the README has no Python sample"
    # The samples name the model where models/fetch puts it, relative to the repository.
    (tmp_path / "models/cache").mkdir(parents=True)
    os.symlink(model_dir, tmp_path / "models/cache/all-minilm-l6-v2")
    monkeypatch.chdir(tmp_path)
    for sample in samples:
        exec(compile(sample, "README.md", "exec"), {"__name__": "__main__"})


def sample_block(readme, language):
    """The code block of `language` right after the README's `<!-- sample: FILE -->` marker, and FILE."""
    match = re.search(rf"<!-- sample: (\S+) -->\s*```{language}\n(.*?)```", readme.read_text(), re.S)
    assert match, f"{readme} has no marked {language} sample"
    return REPO / match.group(1), match.group(2)


def test_the_mobile_readme_samples_are_the_files_the_mobile_tests_compile():
    # Kotlin: compiled and run by tests/bindings/kotlin (BindingTest.theReadmeSampleRuns).
    # Swift: compiled and run by mobile/ios's XCTest (ScenarioTests.testTheReadmeSample), on a Mac.
    samples = [
        (REPO / "mobile/android/README.md", "kotlin"),
        (REPO / "mobile/ios/README.md", "swift"),
        (REPO / "README.md", "kotlin"),
        (REPO / "README.md", "swift"),
    ]
    for readme, language in samples:
        path, block = sample_block(readme, language)
        source = path.read_text()
        source = re.sub(r"\Apackage [\w.]+\n\n", "", source)  # Kotlin's package line is the test's
        assert block == source, f"the sample in {readme} differs from {path}"
