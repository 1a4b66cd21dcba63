/* Leveled logging to stderr (journald picks it up). Cheap when the level is off. */
#ifndef LORAD_LOG_H
#define LORAD_LOG_H

enum { LOG_LEVEL_ERROR = 0, LOG_LEVEL_WARN = 1, LOG_LEVEL_INFO = 2, LOG_LEVEL_DEBUG = 3 };

/* Current level; set once at start-up (by main) before threads exist. */
extern int log_level;

void log_write(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) do { if (log_level >= LOG_LEVEL_ERROR) log_write(LOG_LEVEL_ERROR, __VA_ARGS__); } while (0)
#define log_warn(...)  do { if (log_level >= LOG_LEVEL_WARN)  log_write(LOG_LEVEL_WARN,  __VA_ARGS__); } while (0)
#define log_info(...)  do { if (log_level >= LOG_LEVEL_INFO)  log_write(LOG_LEVEL_INFO,  __VA_ARGS__); } while (0)
#define log_debug(...) do { if (log_level >= LOG_LEVEL_DEBUG) log_write(LOG_LEVEL_DEBUG, __VA_ARGS__); } while (0)

#endif
