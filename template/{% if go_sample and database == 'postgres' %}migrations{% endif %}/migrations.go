// Package migrations holds the service's schema changes as SQL files, embedded in the binary
// so the image needs nothing beside it to migrate (`/app/<name> migrate`).
package migrations

import "embed"

// FS holds every NNNN_name.sql file of this folder; they are applied in name order.
//
//go:embed *.sql
var FS embed.FS
