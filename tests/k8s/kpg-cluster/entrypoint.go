package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

// entrypoint does inside the pod what the official image's docker-entrypoint.sh does: it
// initialises PGDATA on first start (initdb with POSTGRES_USER / POSTGRES_PASSWORD /
// POSTGRES_INITDB_ARGS, each also read from the file its _FILE variable names, the host rule
// of POSTGRES_HOST_AUTH_METHOD, POSTGRES_DB created by a socket-only temporary server), then
// execs the server. It runs as the unprivileged user in
// the pod's network namespace; paths inside the container map to the host directories of its
// volumes (KPG_MOUNT_n=container=host).
func entrypoint(args []string) {
	say := func(format string, a ...any) { fmt.Fprintf(os.Stderr, format+"\n", a...) }
	die := func(format string, a ...any) { say(format, a...); os.Exit(1) }
	mounts := map[string]string{}
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "KPG_MOUNT_") {
			parts := strings.SplitN(strings.SplitN(kv, "=", 2)[1], "=", 2)
			if len(parts) == 2 {
				mounts[strings.TrimSuffix(parts[0], "/")] = parts[1]
			}
		}
	}
	readonly := os.Getenv("KPG_READONLY_ROOT") == "true"
	rootfs := os.Getenv("KPG_ROOTFS")
	mapPath := func(p string) (string, bool) {
		var keys []string
		for k := range mounts {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool { return len(keys[i]) > len(keys[j]) })
		for _, k := range keys {
			if p == k || strings.HasPrefix(p, k+"/") {
				return filepath.Join(mounts[k], strings.TrimPrefix(p, k)), true
			}
		}
		return filepath.Join(rootfs, p), false
	}
	mkdir := func(p string) string {
		host, mounted := mapPath(p)
		if _, err := os.Stat(host); err == nil {
			return host
		}
		if readonly && !mounted {
			die("mkdir: cannot create directory '%s': Read-only file system", p)
		}
		if err := os.MkdirAll(host, 0o700); err != nil {
			die("mkdir: cannot create directory '%s': %v", p, err)
		}
		return host
	}
	major := os.Getenv("KPG_MAJOR")
	pgdataC := os.Getenv("PGDATA")
	if pgdataC == "" {
		pgdataC = "/var/lib/postgresql/data"
		if major >= "18" {
			pgdataC = "/var/lib/postgresql/" + major + "/docker"
		}
	}
	if major >= "18" {
		if _, ok := mounts["/var/lib/postgresql/data"]; ok && !strings.HasPrefix(pgdataC+"/", "/var/lib/postgresql/data/") {
			die("Error: in 18+, these Docker images are configured to store database data in a\n" +
				"       format which is compatible with \"pg_ctlcluster\" (specifically, using\n" +
				"       major-version-specific directory names).  ...\n" +
				"       Counter to that, there appears to be PostgreSQL data in:\n" +
				"         /var/lib/postgresql/data (unused mount/volume)")
		}
	}
	pgdata := mkdir(pgdataC)
	_ = os.Chmod(pgdata, 0o700)
	socket := mkdir("/var/run/postgresql")
	tmp := mkdir("/tmp")
	path := os.Getenv("KPG_BIN") + ":" + os.Getenv("KPG_CLIENTS") + ":/usr/bin:/bin"
	env := setEnv(os.Environ(), "PATH="+path, "PGDATA="+pgdata, "TMPDIR="+tmp)
	run := func(name string, a ...string) error {
		cmd := exec.Command(name, a...)
		cmd.Env, cmd.Stdout, cmd.Stderr = env, os.Stderr, os.Stderr
		return cmd.Run()
	}
	bin := func(name string) string {
		for _, dir := range filepath.SplitList(path) {
			if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
				return filepath.Join(dir, name)
			}
		}
		return name
	}
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		args = append([]string{"postgres"}, args...)
	}
	if args[0] != "postgres" {
		binary := bin(args[0])
		die("exec %s: %v", args[0], syscall.Exec(binary, args, env))
	}
	// The image's file_env: VAR_FILE names a file that holds VAR (a Secret's key mounted as a
	// file), read on every start, and exclusive with VAR itself.
	for _, name := range []string{"POSTGRES_PASSWORD", "POSTGRES_USER", "POSTGRES_DB", "POSTGRES_INITDB_ARGS"} {
		file := os.Getenv(name + "_FILE")
		if file == "" {
			continue
		}
		if os.Getenv(name) != "" {
			die("error: both %s and %s_FILE are set (but are exclusive)", name, name)
		}
		host, _ := mapPath(file)
		data, err := os.ReadFile(host)
		if err != nil {
			die("/usr/local/bin/docker-entrypoint.sh: line 23: %s: %v", file, err)
		}
		value := strings.TrimRight(string(data), "\n")
		_ = os.Setenv(name, value)
		env = setEnv(env, name+"="+value)
	}
	if _, err := os.Stat(filepath.Join(pgdata, "PG_VERSION")); err != nil {
		password := os.Getenv("POSTGRES_PASSWORD")
		auth := os.Getenv("POSTGRES_HOST_AUTH_METHOD")
		if password == "" && auth != "trust" {
			die("Error: Database is uninitialized and superuser password is not specified.\n" +
				"       You must specify POSTGRES_PASSWORD to a non-empty value for the\n" +
				"       superuser. For example, \"-e POSTGRES_PASSWORD=password\" on \"docker run\".")
		}
		user := os.Getenv("POSTGRES_USER")
		if user == "" {
			user = "postgres"
		}
		db := os.Getenv("POSTGRES_DB")
		if db == "" {
			db = user
		}
		if auth == "" {
			auth = "scram-sha-256"
		}
		pwfile := filepath.Join(tmp, ".pwfile")
		if err := os.WriteFile(pwfile, []byte(password+"\n"), 0o600); err != nil {
			die("%v", err)
		}
		initdb := append([]string{"--username=" + user, "--pwfile=" + pwfile}, strings.Fields(os.Getenv("POSTGRES_INITDB_ARGS"))...)
		err := run(bin("initdb"), append(initdb, "-D", pgdata)...)
		_ = os.Remove(pwfile)
		if err != nil {
			os.Exit(1)
		}
		appendFile(filepath.Join(pgdata, "postgresql.conf"), "listen_addresses = '*'\n")
		appendFile(filepath.Join(pgdata, "pg_hba.conf"), "\nhost all all all "+auth+"\n")
		opts := fmt.Sprintf("-c listen_addresses='' -p 5432 -c unix_socket_directories=%s", socket)
		if err := run(bin("pg_ctl"), "-D", pgdata, "-o", opts, "-w", "start"); err != nil {
			os.Exit(1)
		}
		if db != "postgres" {
			env = setEnv(env, "PGPASSWORD="+password)
			sql := fmt.Sprintf("CREATE DATABASE \"%s\";", strings.ReplaceAll(db, "\"", "\"\""))
			if err := run(bin("psql"), "-v", "ON_ERROR_STOP=1", "--no-psqlrc", "-h", socket, "-p", "5432", "-U", user, "-d", "postgres", "-c", sql); err != nil {
				os.Exit(1)
			}
		}
		if err := run(bin("pg_ctl"), "-D", pgdata, "-m", "fast", "-w", "stop"); err != nil {
			os.Exit(1)
		}
		say("\nPostgreSQL init process complete; ready for start up.\n")
	} else {
		say("\nPostgreSQL Database directory appears to contain a database; Skipping initialization\n")
	}
	// Settings that name files (-c ssl_cert_file=/etc/…) read them from the volume's host path.
	for i := 1; i < len(args); i++ {
		if k, v, ok := strings.Cut(args[i], "="); ok && args[i-1] == "-c" && strings.HasPrefix(v, "/") {
			if host, mounted := mapPath(v); mounted {
				args[i] = k + "=" + host
			}
		}
	}
	argv := append(args, "-c", "unix_socket_directories="+socket)
	die("exec postgres: %v", syscall.Exec(bin("postgres"), argv, env))
}

// setEnv replaces or adds variables: exec(2) passes duplicates on, and getenv(3) reads the
// first.
func setEnv(env []string, vars ...string) []string {
	out := make([]string, 0, len(env)+len(vars))
	for _, kv := range env {
		key, _, _ := strings.Cut(kv, "=")
		keep := true
		for _, v := range vars {
			if strings.HasPrefix(v, key+"=") {
				keep = false
			}
		}
		if keep {
			out = append(out, kv)
		}
	}
	return append(out, vars...)
}

func appendFile(path, text string) {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer f.Close()
	_, _ = f.WriteString(text)
}
