# bash completion for hubfleet: subcommands, their options, files, rollout ids
# (read from the state file through `hubfleet history --ids`).
_hubfleet() {
  local cur prev cmd i
  COMPREPLY=()
  cur=${COMP_WORDS[COMP_CWORD]}
  prev=${COMP_WORDS[COMP_CWORD-1]}
  cmd=
  for ((i = 1; i < COMP_CWORD; i++)); do
    case ${COMP_WORDS[i]} in -*) ;; *) cmd=${COMP_WORDS[i]}; break ;; esac
  done
  local cmds="inventory audit upgrade resume rollback status history report"
  if [ -z "$cmd" ]; then
    COMPREPLY=($(compgen -W "$cmds --help --version" -- "$cur"))
    return
  fi
  case $prev in
    -i|--inventory|--state|--events|--known-hosts|--agent|--rules|-o|--output|--audit|--prometheus)
      COMPREPLY=($(compgen -f -- "$cur")); compopt -o filenames 2>/dev/null; return ;;
    --to|--stages|--parallel|--prepare-parallel|-p|--max-failures|--soak|--limit|-l|--exclude|--timeout|-t|--reconnect|--health-timeout|--hosts|--expect|--handshakes|--max-handshakes|--retries|--max-uploads)
      return ;;
  esac
  local common="--state --events --json --known-hosts --accept-new --agent --timeout --reconnect --stats --verbose --help"
  local opts
  case $cmd in
    inventory) opts="check list --json --limit --help" ;;
    audit) opts="-i --inventory --limit --parallel --handshakes --max-handshakes --retries --max-uploads --timeout --expect --json --prometheus --accept-new --known-hosts --agent --stats --verbose --help" ;;
    upgrade) opts="-i --inventory --to --stages --parallel --prepare-parallel --stop-early --max-failures --soak --health-timeout --confirm --dry-run --no-rehearse --limit --exclude --rules $common" ;;
    resume) opts="-i --inventory $common" ;;
    rollback) opts="-i --inventory --hosts $common" ;;
    status) opts="--state --json --steps --help" ;;
    history) opts="--state --json --ids --help" ;;
    report) opts="-o --output --state --audit --help" ;;
  esac
  case $cmd in
    resume|rollback|status|report)
      if [[ $cur != -* ]]; then
        local state=() ids
        for ((i = 1; i < COMP_CWORD; i++)); do
          [ "${COMP_WORDS[i]}" = --state ] && state=(--state "${COMP_WORDS[i+1]}")
        done
        ids=$("${COMP_WORDS[0]}" history --ids "${state[@]}" 2>/dev/null)
        COMPREPLY=($(compgen -W "$ids" -- "$cur"))
        return
      fi ;;
  esac
  COMPREPLY=($(compgen -W "$opts" -- "$cur"))
}
complete -F _hubfleet hubfleet
