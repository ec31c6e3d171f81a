/**
 * Exit codes a service manager acts on. A process that exits with
 * EXIT_CONFLICT must not be restarted as it is: another process holds its
 * directory or its device id, and restarting would only fight it (the
 * systemd unit says RestartPreventExitStatus=78). sysexits.h calls it EX_CONFIG.
 */
export const EXIT_CONFLICT = 78;
