//go:build race

package main

// raceBuild makes the processes under test carry the race detector too.
const raceBuild = true
