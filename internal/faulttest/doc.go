// Package faulttest is horde's fault suite: its test brings up the
// deployment of deploy/compose.yaml (a facilitator, a validator, its trusted
// miner and two miners, each a container of the horde image on its own
// networks) through the Docker Engine API, then kills, pauses, restarts and
// cuts those hosts while jobs run, and checks that every job ends with a
// reason and none is lost. It prints a table of the scenarios with the time
// each fault took to detect.
//
// The package has tests only, plus engine.go: the few Engine API calls the
// suite makes that executors never need (pause, restart, network connect
// with a fixed address).
package faulttest
