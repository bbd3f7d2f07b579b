// loadgen: a small, light HTTP load generator for the XCloud API.
//
// It signs every request itself (HMAC-SHA256 over the contract's string to sign, with a
// fresh nonce and, for registrations, a fresh customer id), so nothing is replayed and
// nothing is pre-computed that could go stale. Latencies are kept exactly (one int64 per
// request) and reported as percentiles in JSON on stdout.
//
//	loadgen -url http://127.0.0.1:8080 -service bench -secret S -mode register -c 64 -d 10s
//	loadgen ... -mode register -rate 1000      # open-loop at a fixed rate
//	loadgen ... -mode get -ids FST-..-m1,.. | -mode list
package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/md5"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type result struct {
	Mode        string         `json:"mode"`
	Concurrency int            `json:"concurrency"`
	Seconds     float64        `json:"seconds"`
	Requests    int            `json:"requests"` // answered, whatever the status
	OK          int            `json:"ok"`       // 2xx answers: the only ones counted as throughput
	RPS         float64        `json:"rps"`      // 2xx answers per second
	Statuses    map[string]int `json:"statuses"`
	Errors      int            `json:"errors"` // transport errors + non-2xx answers
	P50ms       float64        `json:"p50_ms"`
	P99ms       float64        `json:"p99_ms"`
	P999ms      float64        `json:"p999_ms"`
	MaxMs       float64        `json:"max_ms"`
}

var (
	baseURL  = flag.String("url", "http://127.0.0.1:8080", "server base URL")
	service  = flag.String("service", "bench", "service id")
	secret   = flag.String("secret", "", "service secret")
	mode     = flag.String("mode", "register", "register | get | list | verify")
	conc     = flag.Int("c", 16, "concurrent connections")
	duration = flag.Duration("d", 10*time.Second, "how long to run")
	rate     = flag.Float64("rate", 0, "requests per second in all (0 = as fast as possible)")
	ids      = flag.String("ids", "", "comma-separated customer ids for -mode get")
	prefix   = flag.String("prefix", "", "customer id prefix for -mode register (default: random)")
	bodyFile = flag.String("body", "", "JSON template of a registration (customerId is replaced)")
	idem     = flag.Int("idem", 0, "register: 1 sends a new Idempotency-Key with every request")
	keysFile = flag.String("keys", "", "API keys, one per line, for -mode verify (cycled)")
)

func sign(method, path, query, md5b64, ctype, ts, nonce string) string {
	mac := hmac.New(sha256.New, []byte(*secret))
	mac.Write([]byte(strings.Join([]string{method, path, query, md5b64, ctype, ts, nonce, *service}, "\n")))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

func nonce() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func main() {
	flag.Parse()
	template := map[string]any{}
	if *mode == "register" {
		raw, err := os.ReadFile(*bodyFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "loadgen: -body:", err)
			os.Exit(2)
		}
		if err := json.Unmarshal(raw, &template); err != nil {
			fmt.Fprintln(os.Stderr, "loadgen: -body:", err)
			os.Exit(2)
		}
	}
	// The body is the template with its customerId swapped: encoded once, so the
	// generator spends its CPU on signing, not on JSON.
	template["customerId"] = "\x00ID\x00"
	encoded, _ := json.Marshal(template)
	head, tail, _ := bytes.Cut(encoded, []byte("\\u0000ID\\u0000"))
	idList := strings.Split(*ids, ",")
	// -mode verify: each key's body and Content-MD5 made once, before the clock starts.
	var verifyBodies [][]byte
	var verifyMD5s []string
	if *mode == "verify" {
		raw, err := os.ReadFile(*keysFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "loadgen: -keys:", err)
			os.Exit(2)
		}
		for _, key := range strings.Fields(string(raw)) {
			b, _ := json.Marshal(map[string]string{"apiKey": key})
			sum := md5.Sum(b)
			verifyBodies = append(verifyBodies, b)
			verifyMD5s = append(verifyMD5s, base64.StdEncoding.EncodeToString(sum[:]))
		}
		if len(verifyBodies) == 0 {
			fmt.Fprintln(os.Stderr, "loadgen: -keys: no keys")
			os.Exit(2)
		}
	}
	if *prefix == "" {
		*prefix = "FST-" + strconv.FormatInt(time.Now().UnixMilli(), 10) + "-b" + nonce()[:8] + "x"
	}
	transport := &http.Transport{MaxIdleConnsPerHost: *conc, MaxConnsPerHost: *conc, DisableCompression: true}
	client := &http.Client{Transport: transport, Timeout: 30 * time.Second}

	var counter int64
	var mu sync.Mutex
	statuses := map[string]int{}
	latencies := make([][]int64, *conc)
	errors := int64(0)

	var tick <-chan time.Time
	if *rate > 0 {
		t := time.NewTicker(time.Duration(float64(time.Second) / *rate))
		defer t.Stop()
		tick = t.C
	}
	deadline := time.Now().Add(*duration)
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < *conc; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			local := map[string]int{}
			lat := make([]int64, 0, 65536)
			payloadBuf := make([]byte, 0, len(head)+len(tail)+64)
			for time.Now().Before(deadline) {
				if tick != nil {
					if _, ok := <-tick; !ok {
						break
					}
				}
				n := atomic.AddInt64(&counter, 1)
				var method, path, query, ctype, md5b64 string
				var payload []byte
				switch *mode {
				case "register":
					method, path, ctype = "POST", "/xcloud/v1/customers", "application/json"
					payloadBuf = append(payloadBuf[:0], head...)
					payloadBuf = append(payloadBuf, *prefix...)
					payloadBuf = strconv.AppendInt(payloadBuf, n, 10)
					payloadBuf = append(payloadBuf, tail...)
					payload = payloadBuf
					sum := md5.Sum(payload)
					md5b64 = base64.StdEncoding.EncodeToString(sum[:])
				case "get":
					method, path = "GET", "/xcloud/v1/customers/"+idList[int(n)%len(idList)]
				case "list":
					method, path, query = "GET", "/xcloud/v1/customers", "limit=50"
				case "verify":
					method, path, ctype = "POST", "/xcloud/v1/api-keys/verify", "application/json"
					payload = verifyBodies[int(n)%len(verifyBodies)]
					md5b64 = verifyMD5s[int(n)%len(verifyBodies)]
				}
				ts := strconv.FormatInt(time.Now().Unix(), 10)
				nc := nonce()
				url := *baseURL + path
				if query != "" {
					url += "?" + query
				}
				req, _ := http.NewRequest(method, url, bytes.NewReader(payload))
				req.Header.Set("Authorization", "HMAC-SHA256 "+*service+":"+sign(method, path, query, md5b64, ctype, ts, nc))
				req.Header.Set("X-XCloud-Timestamp", ts)
				req.Header.Set("X-XCloud-Nonce", nc)
				if payload != nil {
					req.Header.Set("Content-Type", ctype)
					req.Header.Set("Content-MD5", md5b64)
				}
				if *idem == 1 && *mode == "register" {
					req.Header.Set("Idempotency-Key", nc) // new per request, like a first attempt
				}
				t0 := time.Now()
				resp, err := client.Do(req)
				if err != nil {
					atomic.AddInt64(&errors, 1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode/100 == 2 { // a quick refusal must not flatter the latency
					lat = append(lat, int64(time.Since(t0)))
				}
				local[strconv.Itoa(resp.StatusCode)]++
			}
			latencies[w] = lat
			mu.Lock()
			for k, v := range local {
				statuses[k] += v
			}
			mu.Unlock()
		}(w)
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()

	all := make([]int64, 0)
	for _, l := range latencies {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	pct := func(p float64) float64 {
		if len(all) == 0 {
			return 0
		}
		i := int(p * float64(len(all)-1))
		return float64(all[i]) / 1e6
	}
	bad, ok, answered := int(errors), 0, 0
	for code, n := range statuses {
		answered += n
		if strings.HasPrefix(code, "2") {
			ok += n
		} else {
			bad += n
		}
	}
	out := result{
		Mode: *mode, Concurrency: *conc, Seconds: elapsed, Requests: answered, OK: ok,
		RPS: float64(ok) / elapsed, Statuses: statuses, Errors: bad,
		P50ms: pct(0.50), P99ms: pct(0.99), P999ms: pct(0.999), MaxMs: pct(1.0),
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
