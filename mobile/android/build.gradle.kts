// The Android library: the generated Kotlin binding (package dev.attune), the
// native library per ABI in src/main/jniLibs (made by ./build-jnilibs), and JNA.
plugins {
    id("com.android.library") version "8.7.3"
    id("org.jetbrains.kotlin.android") version "2.1.0"
}

android {
    namespace = "dev.attune"
    compileSdk = 35
    defaultConfig {
        minSdk = 24
        consumerProguardFiles("consumer-rules.pro")
    }
    sourceSets["main"].apply {
        // Written by ./build-jnilibs from bindings/generate's output.
        kotlin.srcDir("src/main/kotlin")
        jniLibs.srcDir("src/main/jniLibs")
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions {
        jvmTarget = "17"
    }
}

dependencies {
    // The binding calls the native library through JNA; the AAR carries
    // JNA's own native dispatch library for every ABI.
    implementation("net.java.dev.jna:jna:5.19.1@aar")
    // Every long call is a suspend function awaiting a Rust future.
    implementation("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.11.0")
}
