// examples/webhooks/receiver.go: a webhook receiver for Accolade in Go (1.19 or later,
// standard library only): it verifies each delivery's signature and timestamp, and acts once
// per notification id. Run: ACCOLADE_WEBHOOK_SECRET=whsec_... PORT=8000 go run receiver.go
// (tests/webhooks.rs runs it against real deliveries; docs/webhooks.md explains each step).
package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

const toleranceSeconds = 300

var (
	digits = regexp.MustCompile(`^\d+$`)
	hex64  = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// verify says why the request is not a genuine, fresh delivery, or "" when it is. rawBody is
// the body exactly as received: parsing and re-serialising it would change the bytes signed.
func verify(secret, header string, rawBody []byte, now time.Time) string {
	parts := map[string]string{}
	for _, p := range strings.Split(header, ",") {
		if k, v, ok := strings.Cut(p, "="); ok {
			parts[k] = v
		}
	}
	t, v1 := parts["t"], parts["v1"]
	if !digits.MatchString(t) || !hex64.MatchString(v1) {
		return "malformed signature"
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(t + "."))
	mac.Write(rawBody)
	got, _ := hex.DecodeString(v1)
	if !hmac.Equal(mac.Sum(nil), got) {
		return "bad signature"
	}
	sent, err := strconv.ParseInt(t, 10, 64)
	if err != nil || now.Unix()-sent > toleranceSeconds || sent-now.Unix() > toleranceSeconds {
		return "stale timestamp"
	}
	return ""
}

func main() {
	secret := os.Getenv("ACCOLADE_WEBHOOK_SECRET")
	if secret == "" {
		panic("set ACCOLADE_WEBHOOK_SECRET to the endpoint's secret")
	}
	// The ids already acted on. In production: a unique key in your database, written in the
	// same transaction as what the notification does, kept at least --webhook-give-up-after-secs.
	var mu sync.Mutex
	seen := map[uint64]bool{}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, "unreadable body", http.StatusBadRequest)
			return
		}
		if why := verify(secret, r.Header.Get("accolade-signature"), body, time.Now()); why != "" {
			http.Error(w, why, http.StatusBadRequest)
			return
		}
		// The body's id, which the signature covers (the accolade-id header is not signed).
		var n struct {
			ID     uint64 `json:"id"`
			Type   string `json:"type"`
			UserID string `json:"user_id"`
		}
		if err := json.Unmarshal(body, &n); err != nil {
			http.Error(w, "not JSON", http.StatusBadRequest)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if seen[n.ID] {
			fmt.Fprint(w, "duplicate")
			return
		}
		fmt.Printf("processed %d %s %s\n", n.ID, n.Type, n.UserID)
		seen[n.ID] = true
		fmt.Fprint(w, "processed")
	})
	host, port := os.Getenv("HOST"), os.Getenv("PORT")
	if host == "" {
		host = "127.0.0.1"
	}
	if port == "" {
		port = "8000"
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, port))
	if err != nil {
		panic(err)
	}
	fmt.Printf("listening on %d\n", l.Addr().(*net.TCPAddr).Port)
	panic(http.Serve(l, nil))
}
