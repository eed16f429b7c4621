/*
 * rampart-mx main: hand the stage's parameters to the server skeleton.
 */
#include "mail/stage.h"

extern const struct stage_def mx_stage;

int main(int argc, char **argv)
{
	return stage_main(&mx_stage, argc, argv);
}
