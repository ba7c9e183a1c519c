package route

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/horde-compute/horde/internal/chain"
	"github.com/horde-compute/horde/internal/metrics"
	"github.com/horde-compute/horde/internal/validator/jobrun"
	"github.com/horde-compute/horde/protocol"
)

// session is the validator's session with one miner; all its fields are
// guarded by the pool's mutex.
type session struct {
	neuron chain.Neuron
	log    *slog.Logger

	conn     Conn
	manifest map[string]int
	caps     protocol.Capabilities // the miner's extensions: none from an upstream miner
	inflight map[string]int        // leased executors, by class
	leases   int                   // all classes
	jobs     map[string]*Inbox     // by job uuid
	held     map[string]*hold      // by class: declined as busy
	dialing  chan struct{}         // closed when a dial ends
	retired  bool                  // left the metagraph (or moved): no new jobs
}

// hold keeps a miner that declined as busy from being picked until until.
type hold struct {
	until time.Time
	step  time.Duration
}

func newSession(n chain.Neuron, log *slog.Logger) *session {
	return &session{neuron: n, log: log.With("miner", n.Hotkey), inflight: map[string]int{}, jobs: map[string]*Inbox{}, held: map[string]*hold{}}
}

// free is how many executors of class the pool believes free on s.
func (s *session) free(class string, now time.Time) int {
	if s.conn == nil || s.retired || s.manifest == nil {
		return 0
	}
	if h := s.held[class]; h != nil && now.Before(h.until) {
		return 0
	}
	return s.manifest[class] - s.inflight[class]
}

// waiter is a job in line for an executor.
type waiter struct {
	want  jobrun.Want
	lease *Lease        // set when served
	wake  chan struct{} // signalled when served or when the pool changed
}

func (w *waiter) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Pool is the validator's miners. Its methods are safe for concurrent use.
// Close ends every session and waits for their readers.
type Pool struct {
	dialer Dialer
	self   string
	log    *slog.Logger
	life   context.Context
	stop   context.CancelFunc
	bg     sync.WaitGroup // session readers and closers
	dials  sync.WaitGroup // dials under way

	mu        sync.Mutex
	miners    map[string]*session // the metagraph's miners, pickable
	pinned    map[string]*session // miners outside the metagraph, never picked
	retired   map[*session]bool   // closed once their last lease ends
	waiters   []*waiter           // in arrival order
	recheck   *time.Timer         // fires when the earliest hold ends
	recheckAt time.Time
	closed    bool
	// banned are miners picked for no job until the time given (a client
	// reported them cheating).
	banned map[string]time.Time
}

// Blacklist keeps miner hotkey from being picked for any job until until.
func (p *Pool) Blacklist(hotkey string, until time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.banned == nil {
		p.banned = map[string]time.Time{}
	}
	if until.After(p.banned[hotkey]) {
		p.banned[hotkey] = until
	}
}

func (p *Pool) bannedLocked(hotkey string, now time.Time) bool {
	until, ok := p.banned[hotkey]
	return ok && now.Before(until)
}

// NewPool returns an empty pool that dials miners with d; self (the
// validator's hotkey) is never a miner of it.
func NewPool(d Dialer, self string, log *slog.Logger) *Pool {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	life, stop := context.WithCancel(context.Background())
	return &Pool{dialer: d, self: self, log: log, life: life, stop: stop,
		miners: map[string]*session{}, pinned: map[string]*session{}, retired: map[*session]bool{}}
}

// Sync makes the pool the miners of the metagraph: new miners join, miners
// that left get no new jobs (their session closes when their last job
// ends), a miner whose address changed is dialled at the new address (the
// old session is retired the same way). Then every miner is dialled that is
// not connected; Sync returns when the dials have ended.
func (p *Pool) Sync(ctx context.Context, neurons []chain.Neuron) {
	p.mu.Lock()
	seen := map[string]bool{}
	var all []*session
	for _, n := range neurons {
		if n.Hotkey == p.self || seen[n.Hotkey] {
			continue
		}
		seen[n.Hotkey] = true
		s := p.miners[n.Hotkey]
		if s == nil || s.neuron.AxonInfo != n.AxonInfo {
			if s != nil {
				s.log.Info("miner moved; dialling its new address", "addr", n.AxonInfo)
				p.retireLocked(s)
			}
			s = newSession(n, p.log)
			p.miners[n.Hotkey] = s
		}
		all = append(all, s)
	}
	for hk, s := range p.miners {
		if !seen[hk] {
			s.log.Info("miner left the metagraph")
			delete(p.miners, hk)
			p.retireLocked(s)
		}
	}
	p.mu.Unlock()
	p.dialAll(ctx, all)
}

// Pin adds a miner outside the metagraph (the validator's trusted miner):
// it is never picked for jobs, only leased by name with LeasePinned.
func (p *Pool) Pin(n chain.Neuron) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s := p.pinned[n.Hotkey]; s != nil {
		if s.neuron.AxonInfo == n.AxonInfo {
			return
		}
		p.retireLocked(s)
	}
	p.pinned[n.Hotkey] = newSession(n, p.log)
}

// Connect makes sure the session with a miner of the metagraph is up and
// returns the miner's manifest.
func (p *Pool) Connect(ctx context.Context, hotkey string) (map[string]int, error) {
	p.mu.Lock()
	s := p.miners[hotkey]
	p.mu.Unlock()
	if s == nil {
		return nil, fmt.Errorf("%w: %s", ErrUnknownMiner, hotkey)
	}
	if err := p.dial(ctx, s); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]int, len(s.manifest))
	for k, n := range s.manifest {
		out[k] = n
	}
	return out, nil
}

// Connected returns how many miners of the metagraph have a session up.
func (p *Pool) Connected() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, s := range p.miners {
		if s.conn != nil {
			n++
		}
	}
	return n
}

// Executors returns the executors of the metagraph's connected miners by
// class: those leased (busy) and those the pool believes free.
func (p *Pool) Executors() map[string]metrics.Load {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	out := map[string]metrics.Load{}
	for _, s := range p.miners {
		if s.conn == nil {
			continue
		}
		for class := range s.manifest {
			l := out[class]
			l.Busy += s.inflight[class]
			l.Free += max(0, s.free(class, now))
			out[class] = l
		}
	}
	return out
}

// LeaseOn leases an executor of class on a connected miner of the
// metagraph for job, whether or not the pool believes one free (synthetic
// rounds test every executor a miner claims).
func (p *Pool) LeaseOn(hotkey, job, class string) (jobrun.Lease, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.leaseOnLocked(p.miners[hotkey], hotkey, job, class)
}

// LeasePinned dials a pinned miner if needed and leases an executor of
// class on it for job.
func (p *Pool) LeasePinned(ctx context.Context, hotkey, job, class string) (jobrun.Lease, error) {
	p.mu.Lock()
	s := p.pinned[hotkey]
	p.mu.Unlock()
	if s == nil {
		return nil, fmt.Errorf("%w: %s (not pinned)", ErrUnknownMiner, hotkey)
	}
	if err := p.dial(ctx, s); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.leaseOnLocked(s, hotkey, job, class)
}

func (p *Pool) leaseOnLocked(s *session, hotkey, job, class string) (jobrun.Lease, error) {
	switch {
	case p.closed:
		return nil, ErrClosed
	case s == nil:
		return nil, fmt.Errorf("%w: %s", ErrUnknownMiner, hotkey)
	case s.conn == nil || s.retired:
		return nil, fmt.Errorf("%w: %s", ErrNotConnected, hotkey)
	}
	return p.leaseLocked(s, job, class), nil
}

// Acquire leases an executor of w.Class on the miner with the most free
// ones (ties at random), never one in w.Tried. When every such executor is
// taken, the job waits in line until one frees up, a manifest grows or a
// miner connects; jobs are served in the order they came (w.Since). It fails with
// ErrNoMiner as soon as no connected miner outside w.Tried has the class,
// with ErrQueueTimeout when w.Until passes, and with ctx's error.
func (p *Pool) Acquire(ctx context.Context, w jobrun.Want) (jobrun.Lease, error) {
	if w.Since.IsZero() {
		w.Since = time.Now()
	}
	wt := &waiter{want: w, wake: make(chan struct{}, 1)}
	defer p.leave(wt)
	var deadline <-chan time.Time
	for queued := false; ; {
		p.mu.Lock()
		l := wt.lease
		wt.lease = nil
		p.mu.Unlock()
		if l != nil {
			return l, nil
		}
		p.ensure(ctx, w.Tried)
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, ErrClosed
		}
		if !queued {
			queued = true
			p.enqueueLocked(wt)
		}
		p.dispatchLocked()
		if l := wt.lease; l != nil {
			wt.lease = nil
			p.mu.Unlock()
			return l, nil
		}
		offered := p.offeredLocked(w.Class, w.Tried)
		p.mu.Unlock()
		switch {
		case !offered:
			return nil, fmt.Errorf("%w: %s", ErrNoMiner, w.Class)
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case !time.Now().Before(w.Until):
			return nil, fmt.Errorf("%w: %s", ErrQueueTimeout, w.Class)
		}
		if deadline == nil {
			if w.Waiting != nil {
				w.Waiting()
			}
			t := time.NewTimer(time.Until(w.Until))
			defer t.Stop()
			deadline = t.C
		}
		select {
		case <-wt.wake:
		case <-deadline:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// enqueueLocked puts wt in line behind every waiter that asked no later
// than it did (w.Since): in arrival order, except that a job asking again
// keeps its first place.
func (p *Pool) enqueueLocked(wt *waiter) {
	i := len(p.waiters)
	for i > 0 && p.waiters[i-1].want.Since.After(wt.want.Since) {
		i--
	}
	p.waiters = slices.Insert(p.waiters, i, wt)
}

// leave takes a waiter out of line, giving back a lease it was served but
// did not take.
func (p *Pool) leave(wt *waiter) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if i := slices.Index(p.waiters, wt); i >= 0 {
		p.waiters = slices.Delete(p.waiters, i, i+1)
	}
	if wt.lease != nil {
		wt.lease.released = true
		p.releaseLocked(wt.lease, false)
	}
}

// ensure dials the miners not in tried whose session is down.
func (p *Pool) ensure(ctx context.Context, tried map[string]bool) {
	p.mu.Lock()
	var down []*session
	for hk, s := range p.miners {
		if !tried[hk] && s.conn == nil {
			down = append(down, s)
		}
	}
	p.mu.Unlock()
	p.dialAll(ctx, down)
}

// dispatchLocked serves the waiters in order: each gets the best miner for
// it if one has a free executor.
func (p *Pool) dispatchLocked() {
	now := time.Now()
	kept := p.waiters[:0]
	for _, wt := range p.waiters {
		if s := p.pickLocked(wt.want.Class, wt.want.Tried, now); s != nil {
			wt.lease = p.leaseLocked(s, wt.want.Job, wt.want.Class)
			wt.signal()
			continue
		}
		kept = append(kept, wt)
	}
	clear(p.waiters[len(kept):])
	p.waiters = kept
}

// changedLocked serves who can be served and wakes the rest to look again
// (the miners offering their class may have changed).
func (p *Pool) changedLocked() {
	p.dispatchLocked()
	for _, wt := range p.waiters {
		wt.signal()
	}
}

// pickLocked chooses a connected miner with a free executor of class, not
// in tried: the one with the most free executors, ties broken at random.
func (p *Pool) pickLocked(class string, tried map[string]bool, now time.Time) *session {
	var cands []*session
	best := 0
	for hk, s := range p.miners {
		if tried[hk] || p.bannedLocked(hk, now) {
			continue
		}
		switch free := s.free(class, now); {
		case free <= 0 || free < best:
		case free > best:
			best, cands = free, []*session{s}
		default:
			cands = append(cands, s)
		}
	}
	if len(cands) == 0 {
		return nil
	}
	return cands[rand.IntN(len(cands))]
}

// offeredLocked reports whether a connected miner not in tried has
// executors of class at all, busy or not.
func (p *Pool) offeredLocked(class string, tried map[string]bool) bool {
	now := time.Now()
	for hk, s := range p.miners {
		if !tried[hk] && !p.bannedLocked(hk, now) && s.conn != nil && s.manifest[class] > 0 {
			return true
		}
	}
	return false
}

func (p *Pool) leaseLocked(s *session, job, class string) *Lease {
	in := newInbox()
	if old := s.jobs[job]; old != nil {
		old.end(fmt.Errorf("%w: job %s was leased again on this miner", jobrun.ErrLost, job))
	}
	s.jobs[job] = in
	s.inflight[class]++
	s.leases++
	return &Lease{p: p, s: s, job: job, class: class, inbox: in}
}

func (p *Pool) releaseLocked(l *Lease, busy bool) {
	s := l.s
	if s.jobs[l.job] == l.inbox {
		delete(s.jobs, l.job)
	}
	s.inflight[l.class]--
	s.leases--
	now := time.Now()
	if busy {
		h := s.held[l.class]
		if h == nil {
			h = &hold{}
			s.held[l.class] = h
		}
		h.step = min(max(2*h.step, BusyFirst), BusyMax)
		h.until = now.Add(h.step)
		p.scheduleLocked(h.until)
	} else if h := s.held[l.class]; h != nil && !now.Before(h.until) {
		delete(s.held, l.class) // the hold is over and the miner took a job: start afresh
	}
	if s.retired && s.leases == 0 {
		p.closeLocked(s, "miner left the pool")
	}
	p.dispatchLocked()
}

// scheduleLocked makes sure waiters are served again when a hold ends at at.
func (p *Pool) scheduleLocked(at time.Time) {
	if p.closed || (p.recheck != nil && !p.recheckAt.After(at)) {
		return
	}
	if p.recheck != nil {
		p.recheck.Stop()
	}
	p.recheckAt = at
	p.recheck = time.AfterFunc(time.Until(at), p.holdsEnded)
}

func (p *Pool) holdsEnded() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.recheck, p.recheckAt = nil, time.Time{}
	p.dispatchLocked()
	now := time.Now()
	for _, s := range p.miners {
		for _, h := range s.held {
			if h.until.After(now) {
				p.scheduleLocked(h.until)
			}
		}
	}
}

// retireLocked stops picking s; its session closes when its last lease ends.
func (p *Pool) retireLocked(s *session) {
	s.retired = true
	if s.leases == 0 {
		p.closeLocked(s, "miner left the pool")
	} else {
		p.retired[s] = true
	}
	p.changedLocked()
}

// closeLocked closes s's session without holding the lock while it closes.
func (p *Pool) closeLocked(s *session, reason string) {
	delete(p.retired, s)
	if c := s.conn; c != nil && !p.closed { // Close closes them all
		p.bg.Go(func() { c.Close(reason) })
	}
}

func (p *Pool) dialAll(ctx context.Context, ss []*session) {
	var wg sync.WaitGroup
	for _, s := range ss {
		wg.Go(func() {
			if err := p.dial(ctx, s); err != nil {
				s.log.Debug("miner not reachable", "err", err)
			}
		})
	}
	wg.Wait()
}

// dial makes sure s's session is up, dialling if needed or waiting for a
// dial under way.
func (p *Pool) dial(ctx context.Context, s *session) error {
	p.mu.Lock()
	switch {
	case p.closed:
		p.mu.Unlock()
		return ErrClosed
	case s.retired:
		p.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrNotConnected, s.neuron.Hotkey)
	case s.conn != nil:
		p.mu.Unlock()
		return nil
	case s.dialing != nil:
		ch := s.dialing
		p.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		if s.conn == nil {
			return fmt.Errorf("%w: %s", ErrNotConnected, s.neuron.Hotkey)
		}
		return nil
	}
	s.dialing = make(chan struct{})
	p.dials.Add(1)
	defer p.dials.Done()
	p.mu.Unlock()

	dctx, cancel := context.WithTimeout(ctx, DialTimeout)
	unhook := context.AfterFunc(p.life, cancel) // Close does not wait for slow dials
	conn, manifest, err := p.dialer.Dial(dctx, s.neuron)
	unhook()
	cancel()

	p.mu.Lock()
	defer p.mu.Unlock()
	close(s.dialing)
	s.dialing = nil
	if err != nil {
		return err
	}
	if p.closed || s.retired {
		conn.Close("")
		return fmt.Errorf("%w: %s", ErrNotConnected, s.neuron.Hotkey)
	}
	s.conn, s.manifest, s.caps = conn, manifest, nil
	if c, ok := conn.(Capable); ok {
		s.caps = c.Capabilities()
	}
	clear(s.held)
	p.bg.Go(func() { p.read(s, conn) })
	p.changedLocked()
	return nil
}

// read routes the miner's messages to its jobs until the session ends; then
// every job on it is told the session was lost.
func (p *Pool) read(s *session, conn Conn) {
	for {
		m, err := conn.Recv(p.life)
		if err != nil {
			s.log.Info("miner session ended", "err", err)
			break
		}
		p.deliver(s, m)
	}
	conn.Close("")
	p.mu.Lock()
	if s.conn == conn {
		s.conn = nil
	}
	jobs := s.jobs
	s.jobs = map[string]*Inbox{}
	if s.retired {
		delete(p.retired, s)
	}
	p.changedLocked()
	p.mu.Unlock()
	for _, in := range jobs {
		in.end(jobrun.ErrLost)
	}
}

func (p *Pool) deliver(s *session, m protocol.Message) {
	switch m := m.(type) {
	case *protocol.V0ExecutorManifestRequest:
		p.mu.Lock()
		s.manifest = m.Manifest
		s.caps = m.Capabilities
		clear(s.held)
		p.changedLocked()
		p.mu.Unlock()
		return
	case *protocol.V0MainHotkeyMessage, *protocol.V0MachineSpecsRequest:
		return
	case *protocol.GenericError:
		s.log.Warn("miner reported an error", "details", m.Details)
		return
	}
	id := protocol.JobUUIDOf(m)
	p.mu.Lock()
	in := s.jobs[id]
	p.mu.Unlock()
	if in == nil {
		s.log.Debug("message for unknown job", "job", id, "type", m.MessageType())
		return
	}
	in.put(m)
}

// Close ends every session and waits until their readers have ended.
// Waiting jobs fail with ErrClosed.
func (p *Pool) Close() {
	p.mu.Lock()
	p.closed = true
	if p.recheck != nil {
		p.recheck.Stop()
	}
	for _, wt := range p.waiters {
		wt.signal()
	}
	p.mu.Unlock()
	p.stop()
	p.dials.Wait() // no session is set up after this
	p.mu.Lock()
	var conns []Conn
	for _, m := range []map[string]*session{p.miners, p.pinned} {
		for _, s := range m {
			if s.conn != nil {
				conns = append(conns, s.conn)
			}
		}
	}
	for s := range p.retired {
		if s.conn != nil {
			conns = append(conns, s.conn)
		}
	}
	p.mu.Unlock()
	for _, c := range conns {
		c.Close("validator stopping")
	}
	p.bg.Wait()
}

var (
	_ jobrun.Lease = (*Lease)(nil)
	_ jobrun.Pool  = (*Pool)(nil)
)

// Lease is an executor reserved on one miner for one job: the job's link to
// the miner and its inbox.
type Lease struct {
	p          *Pool
	s          *session
	job, class string
	inbox      *Inbox
	released   bool // guarded by p.mu
}

// Miner returns the hotkey of the lease's miner.
func (l *Lease) Miner() string { return l.s.neuron.Hotkey }

// Send sends m on the miner's session.
func (l *Lease) Send(ctx context.Context, m protocol.Message) error {
	l.p.mu.Lock()
	conn := l.s.conn
	l.p.mu.Unlock()
	if conn == nil {
		return fmt.Errorf("%w: %s", ErrNotConnected, l.s.neuron.Hotkey)
	}
	return conn.Send(ctx, m)
}

// Capabilities returns the extensions the lease's miner advertised (none:
// it speaks upstream's protocol only).
func (l *Lease) Capabilities() protocol.Capabilities {
	l.p.mu.Lock()
	defer l.p.mu.Unlock()
	return l.s.caps
}

// Next returns the job's next message from the miner (see Inbox).
func (l *Lease) Next(ctx context.Context) (protocol.Message, error) { return l.inbox.Next(ctx) }

// Release gives the executor back; busy says the miner declined the job
// because all its executors of the class were taken, which holds it back
// from picks of the class for a while. Later calls do nothing.
func (l *Lease) Release(busy bool) {
	l.p.mu.Lock()
	defer l.p.mu.Unlock()
	if l.released {
		return
	}
	l.released = true
	l.p.releaseLocked(l, busy)
}
