// The kit's health probe, a module of its own: the service's module (and its go test ./...,
// go vet, govulncheck) never sees it, and it builds with the standard library alone. The image
// build compiles healthcheck.go into each component's main package; main.go builds it alone.
module shipyard.local/healthcheck

go 1.22
