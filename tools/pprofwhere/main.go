// Command pprofwhere says where a horde benchmark's CPU went, per job: it
// reads the samples of a CPU profile (through `go tool pprof -traces`) and
// puts each in one cost class (the first class, in the order below, that
// any frame of its stack belongs to) and one role (the innermost horde
// role on its stack).
//
//	go test -run '^$' -bench 'Routing/sqlite/clients=64' -benchtime 400x \
//	    -cpuprofile cpu.out -o hordetest.test ./internal/hordetest
//	go run ./tools/pprofwhere hordetest.test internal/hordetest/cpu.out 401
//
// The last argument is the number of jobs the profile covers (the
// benchmark's N plus its one warm-up job).
package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

type class struct {
	name string
	re   *regexp.Regexp
}

// classes, in order of precedence: a sample whose stack holds sr25519 is
// crypto even when its leaf is an allocation.
var classes = []class{
	{"sr25519 sign/verify", regexp.MustCompile(`go-schnorrkel|ristretto255|gtank/merlin|mimoo/StrobeGo`)},
	{"store (SQLite, PostgreSQL driver)", regexp.MustCompile(`^modernc\.org/|^database/sql|jackc/pgx|jackc/pgconn|horde/internal/store/`)},
	{"WebSocket framing", regexp.MustCompile(`coder/websocket`)},
	{"JSON encode/decode", regexp.MustCompile(`^encoding/json|horde/pyjson`)},
	{"HTTP (client and server)", regexp.MustCompile(`^net/http|^net/textproto|^mime`)},
	{"files (executor's job directories)", regexp.MustCompile(`^os\.|^internal/syscall/unix`)},
	{"socket syscalls (read/write/epoll)", regexp.MustCompile(`^internal/poll|^net\.|^syscall\.`)},
	{"GC and allocation", regexp.MustCompile(`^runtime\.(gc|mallocgc|scanobject|markroot|bgsweep|sweep|newobject|growslice|makeslice|mark|greyobject|findObject|wbBuf|memclr|typedmemmove|heapBits|tryDefer|scanObjects|\(\*mspan|\(\*mcache|\(\*mheap|\(\*gcWork|\(\*mcentral|\(\*spanSet)`)},
	{"scheduler, timers, locks", regexp.MustCompile(`^runtime\.|^sync\.|^internal/sync|^time\.|^context\.`)},
}

var roles = []class{
	{"client (SDK, in the benchmark)", regexp.MustCompile(`horde/client\.|hordetest\.runClients`)},
	{"facilitator", regexp.MustCompile(`horde/internal/facilitator`)},
	{"validator", regexp.MustCompile(`horde/internal/validator`)},
	{"miner", regexp.MustCompile(`horde/internal/miner`)},
	{"executor", regexp.MustCompile(`horde/internal/executor`)},
	{"store writer (SQLite group commit)", regexp.MustCompile(`horde/internal/store/sqlite\.\(\*writer\)`)},
}

// syscallLeaf: a store sample whose leaf is a syscall is the store's I/O.
var syscallLeaf = regexp.MustCompile(`Syscall|syscall_cp`)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: pprofwhere BINARY PROFILE JOBS")
		os.Exit(2)
	}
	jobs, err := strconv.Atoi(os.Args[3])
	if err != nil || jobs <= 0 {
		fmt.Fprintln(os.Stderr, "pprofwhere: JOBS must be a positive number")
		os.Exit(2)
	}
	out, err := exec.Command("go", "tool", "pprof", "-traces", os.Args[1], os.Args[2]).Output()
	if err != nil {
		fmt.Fprintln(os.Stderr, "pprofwhere: go tool pprof:", err)
		os.Exit(1)
	}
	byClass, byRole := map[string]time.Duration{}, map[string]time.Duration{}
	var total time.Duration
	for _, block := range strings.Split(string(out), "-----------+-------------------------------------------------------")[1:] {
		v, frames := sample(block)
		if len(frames) == 0 {
			continue
		}
		total += v
		c := "other"
		for _, cl := range classes {
			if matchAny(cl.re, frames) {
				c = cl.name
				break
			}
		}
		if strings.HasPrefix(c, "store") && matchAny(syscallLeaf, frames[:min(4, len(frames))]) {
			c = "store: syscalls (WAL writes, locks, reads)"
		}
		byClass[c] += v
		r := "other (runtime, GC workers)"
	frames:
		for _, f := range frames { // innermost first
			for _, ro := range roles {
				if ro.re.MatchString(f) {
					r = ro.name
					break frames
				}
			}
		}
		byRole[r] += v
	}
	fmt.Printf("%.2f CPU-ms per job sampled (%s over %d jobs)\n\n", ms(total)/float64(jobs), total, jobs)
	table("where", byClass, total, jobs)
	table("role", byRole, total, jobs)
}

// sample parses one stack of `pprof -traces`: its value and frames, leaf first.
func sample(block string) (time.Duration, []string) {
	sc := bufio.NewScanner(bytes.NewBufferString(block))
	var v time.Duration
	var frames []string
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if frames == nil {
			d, err := time.ParseDuration(fields[0])
			if err != nil || len(fields) < 2 {
				return 0, nil
			}
			v, fields = d, fields[1:]
		}
		frames = append(frames, fields[0])
	}
	return v, frames
}

func matchAny(re *regexp.Regexp, frames []string) bool {
	for _, f := range frames {
		if re.MatchString(f) {
			return true
		}
	}
	return false
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func table(title string, m map[string]time.Duration, total time.Duration, jobs int) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return m[keys[i]] > m[keys[j]] })
	fmt.Printf("| %s | CPU-ms per job | share |\n|---|---|---|\n", title)
	for _, k := range keys {
		fmt.Printf("| %s | %.2f | %.0f %% |\n", k, ms(m[k])/float64(jobs), 100*float64(m[k])/float64(total))
	}
	fmt.Println()
}
