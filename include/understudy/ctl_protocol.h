/*
 * ctl_protocol.h - messages between a replica's shim and the supervisor, on
 * the SOCK_SEQPACKET socketpair each replica inherits (UNDERSTUDY_CTL_FD).
 *
 * Promotion of a backup:
 *   shim -> sup  US_MSG_FDS_WANTED  (repeated) fd numbers the program has open
 *   shim -> sup  US_MSG_FDS_END
 *   sup -> shim  US_MSG_FDS         (repeated) numbers + the real fds (SCM_RIGHTS)
 *   sup -> shim  US_MSG_ORPHANS     (repeated) connections the dead primary
 *                                   accepted but never logged (SCM_RIGHTS)
 *   sup -> shim  US_MSG_FDS_END
 *   shim -> sup  US_MSG_LIVE        fds[0] = pid of the new keeper
 * Bump US_LOG_VERSION (log_format.h) when this changes.
 */
#ifndef UNDERSTUDY_CTL_PROTOCOL_H
#define UNDERSTUDY_CTL_PROTOCOL_H

#include <stdint.h>

enum us_msg_type {
    US_MSG_FDS_WANTED = 1,
    US_MSG_FDS_END = 2,
    US_MSG_FDS = 3,
    US_MSG_ORPHANS = 4,
    US_MSG_LIVE = 5,
};

#define US_MSG_MAX_FDS 200 /* per message: below the kernel's SCM_MAX_FD (253) */

struct us_msg {
    uint32_t type;
    uint32_t count;
    int32_t fd[US_MSG_MAX_FDS];
};

#endif
