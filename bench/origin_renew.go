// origin_renew: the bench's TLS origin that renews session tickets.
//
// Go's crypto/tls server sends a NewSessionTicket after every TLS 1.3
// handshake, a resumed one included (as BoringSSL-based fronts and most
// CDNs do; an OpenSSL server such as nginx sends none on a resumed
// handshake).  It answers like the bench's nginx origin: 200 "ok" when the
// Authorization header carries the bench's credential, else 401.  Keep-alive
// is off (every response closes its connection) and only HTTP/1.1 is
// offered, so a proxy dials it anew for every request.
//
// Standard library only; bench/run.py builds and starts it on 127.0.0.1.
//
//	origin_renew -listen 127.0.0.1:PORT -cert origin.pem -key origin.key -auth "Bearer KEY"
package main

import (
	"crypto/tls"
	"flag"
	"log"
	"net"
	"net/http"
	"os"
)

func main() {
	listen := flag.String("listen", "", "address to listen on (127.0.0.1:PORT)")
	cert := flag.String("cert", "", "certificate chain (PEM)")
	key := flag.String("key", "", "private key (PEM)")
	auth := flag.String("auth", "", "the Authorization value that gets 200")
	flag.Parse()
	if *listen == "" || *cert == "" || *key == "" || *auth == "" {
		flag.Usage()
		os.Exit(2)
	}
	host, _, err := net.SplitHostPort(*listen)
	if err != nil || host != "127.0.0.1" {
		log.Fatalf("-listen must be 127.0.0.1:PORT (got %q)", *listen)
	}
	kp, err := tls.LoadX509KeyPair(*cert, *key)
	if err != nil {
		log.Fatal(err)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	want := *auth
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			if r.Header.Get("Authorization") != want {
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			w.Write([]byte("ok"))
		}),
		// a non-nil empty map: no HTTP/2 (ALPN offers http/1.1 only)
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{kp},
			MinVersion:   tls.VersionTLS13,
			NextProtos:   []string{"http/1.1"},
		},
		ErrorLog: log.New(os.Stderr, "origin_renew: ", 0),
	}
	srv.SetKeepAlivesEnabled(false)
	log.Fatal(srv.ServeTLS(ln, "", ""))
}
