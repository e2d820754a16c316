// Attune's Android library, buildable on its own or included in an app's build
// (`includeBuild("path/to/attune/mobile/android")`).
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}
dependencyResolutionManagement {
    repositories {
        google()
        mavenCentral()
    }
}
rootProject.name = "attune-android"
