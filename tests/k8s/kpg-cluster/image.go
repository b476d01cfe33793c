package main

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

type imageKind int

const (
	imagePostgres imageKind = iota
	imagePlain
	// imageOperator is CloudNativePG's operator image: its /manager is the built manager.
	imageOperator
	// imageRooted is a postgres image in a rooted (CloudNativePG) pod: its command runs as
	// given, with the major's binaries first on PATH.
	imageRooted
)

// image is what "pulling" an image name gives on this node: a PostgreSQL major whose
// binaries are installed, or a plain image (busybox, pause) whose command runs as given.
type image struct {
	kind  imageKind
	major int
	bin   string
	ref   string
}

func (i image) id() string {
	if i.ref == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(i.ref))
	return fmt.Sprintf("docker.io/library/%s@sha256:%x", strings.SplitN(i.ref, ":", 2)[0], sum)
}

var plainImages = map[string]bool{"busybox": true, "alpine": true, "debian": true, "ubuntu": true, "pause": true, "registry.k8s.io/pause": true}

// resolveImage plays the registry: postgres:<major>[.<minor>][-variant] for an installed
// major, a few plain images, and "not found" for everything else.
func resolveImage(ref, pgRoot string) (image, error) {
	name := ref
	if i := strings.Index(name, "@"); i >= 0 {
		name = name[:i]
	}
	tag := "latest"
	if i := strings.LastIndex(name, ":"); i > strings.LastIndex(name, "/") {
		name, tag = name[:i], name[i+1:]
	}
	name = strings.TrimPrefix(strings.TrimPrefix(name, "docker.io/"), "library/")
	if plainImages[name] {
		return image{kind: imagePlain, ref: name + ":" + tag}, nil
	}
	if name == cnpgImage && *cnpgDir != "" && tag == cnpgVersion {
		return image{kind: imageOperator, bin: filepath.Join(*cnpgDir, "manager"), ref: ref}, nil
	}
	if name == cnpgPostgresImage {
		name = "postgres"
	}
	if name != "postgres" {
		return image{}, fmt.Errorf("rpc error: code = NotFound desc = failed to resolve reference \"%s\": %s: not found", ref, ref)
	}
	digits := tag
	if i := strings.IndexAny(digits, ".-"); i >= 0 {
		digits = digits[:i]
	}
	major, err := strconv.Atoi(digits)
	if tag == "latest" {
		major, err = 18, nil
	}
	bin := filepath.Join(pgRoot, strconv.Itoa(major), "bin")
	if _, statErr := os.Stat(filepath.Join(bin, "postgres")); err != nil || statErr != nil {
		return image{}, fmt.Errorf("rpc error: code = NotFound desc = failed to resolve reference \"docker.io/library/postgres:%s\": docker.io/library/postgres:%s: not found", tag, tag)
	}
	return image{kind: imagePostgres, major: major, bin: bin, ref: "postgres:" + tag}, nil
}

// clientsBin holds psql, pg_isready, pg_dump and friends of the newest major: they talk to
// every older server.
func clientsBin(pgRoot string) string { return filepath.Join(pgRoot, "clients", "bin") }
