// goclient: a Go net/http client of the compat suite (standard library only).
//
//	goclient URL
//
// POSTs a small JSON body with a dummy key through http.DefaultClient (the
// proxy from HTTPS_PROXY, the roots from SSL_CERT_FILE: whatever the
// environment says), checks the fake origin echoed the body's digest, and
// prints "ok PROTO". Exit status 0 only on success.
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: goclient URL")
		os.Exit(2)
	}
	body := []byte(`{"model":"compat","input":"hello from Go"}`)
	req, err := http.NewRequest("POST", os.Args[1], bytes.NewReader(body))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	req.Header.Set("Authorization", "Bearer sk-compat-dummy")
	req.Header.Set("Content-Type", "application/json")
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if resp.StatusCode != 200 {
		fmt.Fprintf(os.Stderr, "status %d: %.300s\n", resp.StatusCode, data)
		os.Exit(1)
	}
	var echo struct {
		BodySHA256 string `json:"body_sha256"`
	}
	if err := json.Unmarshal(data, &echo); err != nil {
		fmt.Fprintln(os.Stderr, "bad echo:", err)
		os.Exit(1)
	}
	sum := sha256.Sum256(body)
	if echo.BodySHA256 != hex.EncodeToString(sum[:]) {
		fmt.Fprintln(os.Stderr, "the origin saw another body")
		os.Exit(1)
	}
	fmt.Println("ok", resp.Proto)
}
