#!/bin/sh
# Clusterra's privileged helper: create, lock, unlock or look up a person's POSIX account (and their
# Slurm association) on a cluster's head node. It must run as root; everything else in the portal
# only asks it to (clusters/provisioning.py):
#   - local cluster, portal running as root:  this file is executed directly;
#   - local cluster, portal running as a service user:  sudo -n <this file> ... (docs/deployment.md);
#   - SSM cluster:  this very text, preceded by `set -- <arguments>`, is sent with SendCommand
#     (AWS-RunShellScript runs it as root with sh). So: POSIX sh only, no bash-isms.
#
#   provision_helper.sh create --user U --uid N --home H --shell S [--slurm-account A] [--min-uid M]
#   provision_helper.sh lock   --user U --uid N [--kill-processes] [--cancel-jobs] [--min-uid M]
#   provision_helper.sh unlock --user U --uid N --home H [--slurm-account A] [--min-uid M]
#   provision_helper.sh lookup --user U   |   lookup --uid N
#
# It trusts none of its arguments: the user name must be a portable POSIX name other than root, the
# uid at least --min-uid and this machine's UID_MIN (login.defs), the home an absolute path with the
# user name as one of its components, below directories only root can change.
#
# Output: one "step: <what was done or found>" line per step on stdout (lookup: "account: <uid>
# <home>" or "account: none"; with --uid, "owner: <name>" or "owner: none"); "error: <why>" on stderr.
# Exit status: 0 done; 10 bad arguments; 11 refused (system account, name or uid taken, unsafe home,
# missing tool); 12 failed, trying again may work (a tool failed or timed out, lock busy, slurmdbd
# down); 13 no such user (unlock). Every step is idempotent: running it again finishes a job that
# failed half-way, and reports what was already there.

set -u
umask 077
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LC_ALL=C
export PATH LC_ALL
unset CDPATH ENV BASH_ENV
cd / || exit 12

TOOL_TIMEOUT=60     # seconds for any one command (useradd, sacctmgr, scancel...)
JOBS_TIMEOUT=30     # seconds for cancelled jobs to leave the queue's active states
KILL_TIMEOUT=15     # seconds for the user's processes to be gone after SIGKILL
LOCK_FILE=/run/clusterra-provision.lock
MAX_UID=4294967294  # (uid_t)-1 is "no user"
NOBODY_UID=65534

die() { code=$1; shift; printf 'error: %s\n' "$*" >&2; exit "$code"; }
step() { printf 'step: %s\n' "$*"; }
# An argument as it may appear in a message: printable ASCII only, at most 64 characters.
shown() { printf '%s' "$1" | tr -c 'A-Za-z0-9._/@+=:-' '?' | cut -c1-64; }
oneline() { printf '%s' "$1" | tr '\n\t' '  ' | cut -c1-400; }

# run SECONDS CMD...: CMD with a time limit and no input; its stdout and stderr in $out, its status returned.
run() {
  _t=$1; shift
  out=$(timeout -k 5 "$_t" "$@" </dev/null 2>&1)
}
# must WHAT CMD...: run CMD; if it fails, stop with status 12 (trying again may work) naming WHAT.
must() {
  _what=$1; shift
  run "$TOOL_TIMEOUT" "$@" && return 0
  _rc=$?
  [ "$_rc" -eq 124 ] && die 12 "$_what: $1 did not finish within $TOOL_TIMEOUT s."
  die 12 "$_what failed ($1 exited with status $_rc): $(oneline "$out")"
}

# --- argument checks (the same rules as clusters/provisioning.py) ----------------------------------
valid_name() {  # clusters.models.posix_username_validator: ^[a-z_][a-z0-9_-]{0,31}$
  case $1 in ''|[!a-z_]*|*[!a-z0-9_-]*) return 1 ;; esac
  [ ${#1} -le 32 ]
}
valid_number() {  # decimal, no sign, no leading zero, at most 10 digits
  case $1 in ''|*[!0-9]*|0?*) return 1 ;; esac
  [ ${#1} -le 10 ]
}
valid_slurm_account() {  # ^[a-z0-9_][a-z0-9_.-]{0,63}$ (Slurm keeps account names in lower case)
  case $1 in ''|[!a-z0-9_]*|*[!a-z0-9_.-]*) return 1 ;; esac
  [ ${#1} -le 64 ]
}
valid_home() {  # absolute, normalised, plain characters, not directly under /, the user name a component
  case $1 in /*) ;; *) return 1 ;; esac
  case $1 in *[!A-Za-z0-9._/@+-]*|*//*|*/./*|*/../*|*/.|*/..|*/) return 1 ;; esac
  case $1/ in */"$user"/*) ;; *) return 1 ;; esac
  [ -n "${1%/*}" ] && [ ${#1} -le 4000 ]
}
valid_shell() {  # an absolute path to an executable listed in /etc/shells (or nologin/false)
  case $1 in /*) ;; *) return 1 ;; esac
  case $1 in *[!A-Za-z0-9._/+-]*|*//*|*/./*|*/../*) return 1 ;; esac
  [ -f "$1" ] && [ -x "$1" ] || return 1
  case ${1##*/} in nologin|false) return 0 ;; esac
  grep -qxF -- "$1" /etc/shells 2>/dev/null
}

# The lowest uid the portal may act as here: --min-uid, and never below this machine's UID_MIN.
uid_floor() {
  _m=$(awk '$1 == "UID_MIN" && $2 ~ /^[0-9]+$/ { v = $2 } END { print v }' /etc/login.defs 2>/dev/null)
  valid_number "$_m" || _m=1000
  [ "$_m" -ge 1000 ] || _m=1000
  [ "$min_uid" -gt "$_m" ] && _m=$min_uid
  echo "$_m"
}
# Never root or a system account, whatever the caller says.
check_identity() {
  [ "$user" != root ] || die 11 "The portal never manages root."
  floor=$(uid_floor)
  if [ "$uid" -eq 0 ] || [ "$uid" -lt "$floor" ]; then
    die 11 "uid $uid is below $floor, the lowest uid the portal manages on this head node: it never touches system accounts."
  fi
  [ "$uid" -ne "$NOBODY_UID" ] && [ "$uid" -le "$MAX_UID" ] || die 11 "uid $uid is reserved (nobody / no user)."
}

# --- the passwd and shadow entries ------------------------------------------------------------------
field() { printf '%s\n' "$1" | cut -d: -f"$2"; }
# getent asks NSS (maybe LDAP over the network): bounded too. Names never start with a digit.
passwd_by_name() { timeout 30 getent passwd "$1" 2>/dev/null | head -n 1; }
passwd_by_uid() { timeout 30 getent passwd "$1" 2>/dev/null | head -n 1; }
shadow_of() { timeout 30 getent shadow "$1" 2>/dev/null | head -n 1; }
# usermod changes only /etc/passwd and /etc/shadow: an LDAP or SSSD account is locked in its directory.
must_be_local() {
  awk -F: -v u="$user" '$1 == u { found = 1 } END { exit !found }' /etc/passwd \
    || die 11 "$user is not a local account of the head node (it comes from a directory such as LDAP): $1 it there."
}

# Serialise provisioning runs on this machine (two onboardings of the same person must not race).
take_lock() {
  command -v flock >/dev/null 2>&1 || return 0
  exec 9>>"$LOCK_FILE" || die 12 "Cannot open $LOCK_FILE."
  flock -w 60 9 || die 12 "Another provisioning run has held $LOCK_FILE for over 60 s; try again."
}

# --- the home directory -----------------------------------------------------------------------------
# Every directory above the home must be root's and writable by nobody else: otherwise another user
# could swap in a symlink and have us chown or chmod something else (or pre-create the home). Both the
# path as given and the one it resolves to (a /home -> /export/home link: /export counts too).
check_home_parents() {
  _parent=${home%/*}
  [ -d "$_parent" ] || die 11 "The home directory's parent $_parent does not exist on the head node (is its file system mounted?)."
  check_dirs "$_parent"
  _real=$(realpath -e -- "$_parent") || die 12 "Cannot resolve $_parent."
  [ "$_real" = "$_parent" ] || check_dirs "$_real"
}
check_dirs() {  # ABSOLUTE_PATH: it and every directory above it
  _p=/
  _rest=${1#/}
  while :; do
    _st=$(stat -L -c '%u %a' -- "$_p") || die 12 "Cannot stat $_p."
    _owner=${_st% *}; _mode=${_st#* }
    [ "$_owner" -eq 0 ] || die 11 "$_p (above the home directory $home) belongs to uid $_owner, not root: refusing."
    # %a is octal (e.g. 755, 1777): the last two digits are group and others; 2, 3, 6, 7 include write.
    case $_mode in *[2367]? | *[2367]) die 11 "$_p (above the home directory $home) is writable by other users (mode $_mode): refusing." ;; esac
    [ -n "$_rest" ] || break
    _p=${_p%/}/${_rest%%/*}
    case $_rest in */*) _rest=${_rest#*/} ;; *) _rest= ;; esac
  done
}
# An existing home must be a real directory of the user (or of root, e.g. made by an administrator).
check_home_itself() {
  [ -L "$home" ] && die 11 "The home directory $home is a symbolic link: refusing."
  [ -e "$home" ] || return 0
  [ -d "$home" ] || die 11 "$home exists and is not a directory: refusing."
  _owner=$(stat -c %u -- "$home") || die 12 "Cannot stat $home."
  [ "$_owner" = "$uid" ] || [ "$_owner" = 0 ] || die 11 "The home directory $home already exists and belongs to uid $_owner, not $uid: refusing."
}
# Make sure the home exists, belongs to the user and has mode 0700.
ensure_home() {
  check_home_parents
  check_home_itself
  _gid=$(field "$(passwd_by_name "$user")" 4)
  if [ ! -e "$home" ]; then
    # Made by root, private, filled from /etc/skel, and only then given to the user.
    must "Creating the home directory $home" mkdir -m 0700 -- "$home"
    [ -d /etc/skel ] && must "Copying /etc/skel into $home" cp -R -P -p -- /etc/skel/. "$home/"
    must "Making $home private" chmod 0700 -- "$home"  # cp -p gave it /etc/skel's mode
    must "Giving $home to $user" chown -R -h -- "$uid:$_gid" "$home"
    step "created home $home (owner $user, mode 0700)"
    return 0
  fi
  _st=$(stat -c '%u %a' -- "$home") || die 12 "Cannot stat $home."
  if [ "$_st" = "$uid 700" ]; then
    [ -n "$just_created" ] || step "home $home already present (owner $user, mode 0700)"
    return 0
  fi
  # Only the directory itself: what is inside is the user's.
  [ "${_st% *}" = "$uid" ] || must "Giving $home to $user" chown -h -- "$uid:$_gid" "$home"
  must "Making $home private" chmod 0700 -- "$home"
  step "set home $home to owner $user, mode 0700 (was uid ${_st% *}, mode ${_st#* })"
}

# --- Slurm --------------------------------------------------------------------------------------------
ensure_slurm_association() {
  [ -n "$slurm_account" ] || return 0
  command -v sacctmgr >/dev/null 2>&1 || die 11 "sacctmgr is not installed on the head node: cannot add $user to the Slurm account $slurm_account."
  must "Looking up the Slurm account $slurm_account" sacctmgr -nP show account "$slurm_account" format=account
  if printf '%s\n' "$out" | grep -qxF -- "$slurm_account"; then
    step "Slurm account $slurm_account already present"
  elif run "$TOOL_TIMEOUT" sacctmgr -i add account "$slurm_account"; then
    step "created Slurm account $slurm_account"
  else
    _err=$out  # "Nothing new added." (exit 1) when another head node was quicker: look again
    must "Looking up the Slurm account $slurm_account" sacctmgr -nP show account "$slurm_account" format=account
    printf '%s\n' "$out" | grep -qxF -- "$slurm_account" || die 12 "Adding the Slurm account $slurm_account failed: $(oneline "$_err")"
    step "Slurm account $slurm_account already present"
  fi
  must "Looking up the Slurm association of $user" sacctmgr -nP show assoc user="$user" account="$slurm_account" format=user
  if printf '%s\n' "$out" | grep -qxF -- "$user"; then
    step "Slurm association $user → account $slurm_account already present"
  elif run "$TOOL_TIMEOUT" sacctmgr -i add user "$user" account="$slurm_account"; then
    step "added Slurm association $user → account $slurm_account"
  else
    _err=$out
    must "Looking up the Slurm association of $user" sacctmgr -nP show assoc user="$user" account="$slurm_account" format=user
    printf '%s\n' "$out" | grep -qxF -- "$user" || die 12 "Adding $user to the Slurm account $slurm_account failed: $(oneline "$_err")"
    step "Slurm association $user → account $slurm_account already present"
  fi
}

# --- the actions ----------------------------------------------------------------------------------------
do_create() {
  take_lock
  entry=$(passwd_by_name "$user")
  if [ -n "$entry" ]; then
    # Adopt an account that is already there (a previous run, or made by an administrator), but
    # only if it is exactly the one the portal means.
    _have_uid=$(field "$entry" 3); _have_home=$(field "$entry" 6)
    [ "$_have_uid" = "$uid" ] || die 11 "The name $user is taken on the head node by uid $_have_uid, not $uid."
    [ "$_have_home" = "$home" ] || die 11 "$user exists on the head node with home $_have_home, but the cluster's home for $user is $home; change one of them first."
    step "POSIX user $user already present (uid $uid, shell $(field "$entry" 7))"
  else
    _owner=$(passwd_by_uid "$uid")
    [ -z "$_owner" ] || die 11 "uid $uid is taken on the head node by $(field "$_owner" 1)."
    check_home_parents
    check_home_itself
    # UMASK=0077: useradd makes the home 0700 from the start (login.defs says 022 on Debian).
    # A private group named like the user with gid = uid where possible (Debian's useradd
    # --user-group would pick the next free gid instead).
    _grp=$(timeout 30 getent group "$user" 2>/dev/null | head -n 1)
    if [ -n "$_grp" ]; then
      [ "$(field "$_grp" 3)" = "$uid" ] || die 11 "A group named $user already exists with gid $(field "$_grp" 3): refusing to put $user in it."
      _gid=$uid  # left by an earlier run (or userdel): the same private group
    elif timeout 30 getent group "$uid" >/dev/null 2>&1; then
      _gid=  # gid $uid belongs to another group: useradd picks a free one
    else
      must "Creating the group $user" groupadd --gid "$uid" "$user"
      _gid=$uid
    fi
    if [ -n "$_gid" ]; then
      run "$TOOL_TIMEOUT" useradd --uid "$uid" --gid "$_gid" --home-dir "$home" --create-home -K UMASK=0077 --shell "$shell" --no-log-init "$user"
    else
      run "$TOOL_TIMEOUT" useradd --uid "$uid" --user-group --home-dir "$home" --create-home -K UMASK=0077 --shell "$shell" --no-log-init "$user"
    fi
    _rc=$?
    entry=$(passwd_by_name "$user")
    if [ "$_rc" -ne 0 ]; then
      [ "$_rc" -eq 124 ] && die 12 "useradd did not finish within $TOOL_TIMEOUT s."
      # Someone else may have created it meanwhile (useradd: 4 uid in use, 9 name in use).
      [ -n "$entry" ] && [ "$(field "$entry" 3)" = "$uid" ] || {
        _owner=$(passwd_by_uid "$uid")
        [ -n "$entry" ] && die 11 "The name $user is taken on the head node by uid $(field "$entry" 3), not $uid."
        [ -n "$_owner" ] && die 11 "uid $uid is taken on the head node by $(field "$_owner" 1)."
        die 12 "useradd failed (status $_rc): $(oneline "$out")"
      }
    fi
    [ -n "$entry" ] || die 12 "useradd succeeded but $user is not in the passwd database."
    _gid=$(field "$entry" 4)
    step "created POSIX user $user (uid $uid, group $(timeout 30 getent group "$_gid" | cut -d: -f1) gid $_gid, home $home 0700, shell $shell)"
    just_created=1
  fi
  ensure_home
  ensure_slurm_association
}

# Locked = password locked and account expired (usermod's own advice: --lock alone leaves SSH keys
# working). The portal itself refuses an expired account (clusters/posix.py).
is_locked() {
  _sh=$(shadow_of "$user")
  [ -n "$_sh" ] || return 1
  _pw=$(field "$_sh" 2); _exp=$(field "$_sh" 8)
  case $_pw in '!'*) ;; *) return 1 ;; esac
  valid_number "$_exp" || return 1
  [ "$_exp" -gt 0 ] && [ "$_exp" -le $(( $(date +%s) / 86400 )) ]
}
# The user's processes that are not zombies (real or effective uid).
count_processes() {
  timeout 10 ps -e -o ruid=,euid=,stat= 2>/dev/null | awk -v u="$uid" '($1 == u || $2 == u) && $3 !~ /^Z/ { n++ } END { print n + 0 }'
}
# Sets $jobs: how many jobs of the user are pending, running or about to (not in a subshell: must may exit).
count_jobs() {
  must "Listing the Slurm jobs of $user" squeue -h -u "$uid" -t PENDING,RUNNING,SUSPENDED,CONFIGURING,REQUEUED,RESIZING -o %A
  jobs=$(printf '%s\n' "$out" | grep -c '[0-9]')
}
now() { date +%s; }

do_lock() {
  take_lock
  entry=$(passwd_by_name "$user")
  if [ -z "$entry" ]; then
    _owner=$(passwd_by_uid "$uid")
    [ -z "$_owner" ] || die 11 "$user does not exist on the head node but uid $uid belongs to $(field "$_owner" 1): refusing."
    step "no POSIX user $user on the head node: nothing to lock"
  else
    _have_uid=$(field "$entry" 3)
    [ "$_have_uid" = "$uid" ] || die 11 "$user has uid $_have_uid on the head node, not $uid: refusing."
    if is_locked; then
      step "POSIX user $user already locked"
    else
      must_be_local lock
      must "Locking $user" usermod --lock --expiredate 1 "$user"
      step "locked POSIX user $user (password locked, account expired)"
    fi
  fi
  # Jobs first (slurmstepd ends their processes in order), then whatever is left.
  if [ "$cancel_jobs" = 1 ] && [ -z "$entry" ]; then
    step "no POSIX user $user: no Slurm jobs to cancel"  # Slurm cannot name a uid without a passwd entry
  elif [ "$cancel_jobs" = 1 ]; then
    command -v scancel >/dev/null 2>&1 && command -v squeue >/dev/null 2>&1 || die 11 "Slurm (scancel, squeue) is not installed on the head node: cannot cancel the jobs of $user."
    count_jobs
    _n=$jobs
    if [ "$_n" -eq 0 ]; then
      step "no Slurm jobs of $user to cancel"
    else
      must "Cancelling the Slurm jobs of $user" scancel --user="$uid"
      _deadline=$(( $(now) + JOBS_TIMEOUT ))
      while count_jobs; [ "$jobs" -ne 0 ]; do
        [ "$(now)" -lt "$_deadline" ] || die 12 "The Slurm jobs of $user were cancelled but are still queued after $JOBS_TIMEOUT s."
        sleep 0.1
      done
      step "cancelled $_n Slurm job(s) of $user"
    fi
  fi
  if [ "$kill_processes" = 1 ]; then
    _n=$(count_processes)
    if [ "$_n" -eq 0 ]; then
      step "no processes of $user (uid $uid) were running"
    else
      # Repeat until none is left: a process may fork while we kill (uid >= the floor: never a system uid).
      _deadline=$(( $(now) + KILL_TIMEOUT ))
      while :; do
        timeout 10 pkill -KILL -U "$uid"; timeout 10 pkill -KILL -u "$uid"
        [ "$(count_processes)" -eq 0 ] && break
        [ "$(now)" -lt "$_deadline" ] || die 12 "Processes of $user (uid $uid) are still running after SIGKILL for $KILL_TIMEOUT s."
        sleep 0.05
      done
      step "killed $_n process(es) of $user (uid $uid)"
    fi
  fi
}

do_unlock() {
  take_lock
  entry=$(passwd_by_name "$user")
  [ -n "$entry" ] || die 13 "There is no POSIX user $user on the head node to unlock: create it instead."
  _have_uid=$(field "$entry" 3); _have_home=$(field "$entry" 6)
  [ "$_have_uid" = "$uid" ] || die 11 "$user has uid $_have_uid on the head node, not $uid: refusing."
  [ "$_have_home" = "$home" ] || die 11 "$user exists on the head node with home $_have_home, but the cluster's home for $user is $home; change one of them first."
  must_be_local unlock
  _sh=$(shadow_of "$user")
  _pw=$(field "$_sh" 2); _exp=$(field "$_sh" 8)
  _did=
  # Only a locked real password: usermod refuses to turn a bare "!" (no password) into an empty one.
  case $_pw in '!'?*) [ "$_pw" != '!!' ] && { must "Unlocking the password of $user" usermod --unlock "$user"; _did=1; } ;; esac
  if [ -n "$_exp" ]; then
    must "Removing the expiry of $user" usermod --expiredate '' "$user"
    _did=1
  fi
  if [ -n "$_did" ]; then
    step "unlocked POSIX user $user (uid $uid, home $home)"
  else
    step "POSIX user $user was not locked"
  fi
  ensure_home
  ensure_slurm_association
}

do_lookup() {
  if [ -n "$user" ]; then
    _e=$(passwd_by_name "$user")
    if [ -n "$_e" ]; then printf 'account: %s %s\n' "$(field "$_e" 3)" "$(field "$_e" 6)"; else echo "account: none"; fi
  else
    _e=$(passwd_by_uid "$uid")
    if [ -n "$_e" ]; then printf 'owner: %s\n' "$(field "$_e" 1)"; else echo "owner: none"; fi
  fi
}

# --- arguments ----------------------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || die 11 "The provisioning helper must run as root (directly, or with sudo: docs/deployment.md)."
[ $# -ge 1 ] || die 10 "Usage: provision_helper.sh create|lock|unlock|lookup --user NAME --uid N ..."
action=$1; shift
user= uid= home= shell= slurm_account= min_uid=1000 kill_processes=0 cancel_jobs=0 just_created=
while [ $# -gt 0 ]; do
  case $1 in
    --user|--uid|--home|--shell|--slurm-account|--min-uid)
      [ $# -ge 2 ] || die 10 "$1 needs a value."
      case $1 in
        --user) user=$2 ;; --uid) uid=$2 ;; --home) home=$2 ;; --shell) shell=$2 ;;
        --slurm-account) slurm_account=$2 ;; --min-uid) min_uid=$2 ;;
      esac
      shift 2 ;;
    --kill-processes) kill_processes=1; shift ;;
    --cancel-jobs) cancel_jobs=1; shift ;;
    *) die 10 "Unknown argument $(shown "$1")." ;;
  esac
done

[ -z "$user" ] || valid_name "$user" || die 10 "$(shown "$user") is not a valid POSIX user name (1-32 of a-z 0-9 _ -, not starting with a digit or -)."
[ -z "$uid" ] || valid_number "$uid" || die 10 "$(shown "$uid") is not a uid."
valid_number "$min_uid" || die 10 "$(shown "$min_uid") is not a uid."
[ -z "$slurm_account" ] || valid_slurm_account "$slurm_account" || die 10 "$(shown "$slurm_account") is not a valid Slurm account name."
needs() {  # OPTION VALUE: the action needs this option
  [ -n "$2" ] || die 10 "$action needs $1."
}
only() {  # the options this action takes: anything else given is a mistake
  for _o in user uid home shell slurm_account; do
    case " $* " in *" $_o "*) continue ;; esac
    eval "_v=\$$_o"
    [ -z "$_v" ] || die 10 "$action takes no --$(echo "$_o" | tr _ -)."
  done
  case " $* " in *" flags "*) ;; *) [ "$kill_processes$cancel_jobs" = 00 ] || die 10 "$action takes no --kill-processes or --cancel-jobs." ;; esac
}

case $action in
  create)
    only user uid home shell slurm_account
    needs --user "$user"; needs --uid "$uid"; needs --home "$home"; needs --shell "$shell"
    check_identity
    valid_home "$home" || die 10 "$(shown "$home") is not a valid home directory for $user (an absolute path below a directory, with $user as one of its components)."
    valid_shell "$shell" || die 10 "$(shown "$shell") is not a login shell of this head node (an executable listed in /etc/shells)."
    do_create ;;
  lock)
    only user uid flags
    needs --user "$user"; needs --uid "$uid"
    check_identity
    do_lock ;;
  unlock)
    only user uid home slurm_account
    needs --user "$user"; needs --uid "$uid"; needs --home "$home"
    check_identity
    valid_home "$home" || die 10 "$(shown "$home") is not a valid home directory for $user (an absolute path below a directory, with $user as one of its components)."
    do_unlock ;;
  lookup)
    only user uid
    { [ -n "$user" ] && [ -z "$uid" ]; } || { [ -z "$user" ] && [ -n "$uid" ]; } || die 10 "lookup takes --user NAME or --uid N."
    do_lookup ;;
  *) die 10 "Unknown action $(shown "$action") (create, lock, unlock or lookup)." ;;
esac
exit 0
