// The kit's health probe, a module of its own: the service's module (and its go test ./...,
// go vet, govulncheck) never sees it, and it builds with the standard library alone.
module shipyard.local/healthcheck

go 1.22
